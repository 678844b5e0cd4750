//! What keeps the API standing under abuse: refusals (401 and 403) counted
//! per client address and answered 429 beyond a rate, and their audit rows
//! written in batches (one transaction a second) rather than one fsync each.
//!
//! A request with a valid token is never limited: the limit costs a caller
//! who guesses tokens, not an operator who shares its address.
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::metrics as m;

/// Refusals one address gets answered (and audited one by one) per window.
pub const REFUSALS_PER_WINDOW: u32 = 30;
/// The window of [`REFUSALS_PER_WINDOW`].
pub const WINDOW: Duration = Duration::from_secs(60);
/// How often the refusals waiting are written to the audit log.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Addresses followed at once; a refusal from one more is limited at once.
const ADDRESSES: usize = 65_536;
/// Audit rows waiting for the next batch; beyond, refusals are only counted.
const PENDING: usize = 10_000;

/// One audit row waiting to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub actor: String,
    pub detail: String,
}

/// How a refusal is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// With its own status (401 or 403), audited.
    Answered,
    /// With 429 (retry within [`WINDOW`]): the address had its share;
    /// counted in a summary row.
    Limited,
}

#[derive(Default)]
struct Inner {
    /// Per address: the start of its window and the refusals in it.
    windows: HashMap<IpAddr, (Instant, u32)>,
    rows: Vec<Row>,
    /// Limited refusals since the last batch, per address.
    limited: HashMap<IpAddr, u64>,
    /// Refusals neither answered nor attributed (too many addresses or rows).
    uncounted: u64,
}

#[derive(Default)]
pub struct Guard {
    inner: Mutex<Inner>,
}

impl Guard {
    /// Records a refusal of `peer`; says how to answer it.
    pub fn refuse(&self, peer: IpAddr, actor: &str, detail: String) -> Refusal {
        self.refuse_at(Instant::now(), peer, actor, detail)
    }

    fn refuse_at(&self, now: Instant, peer: IpAddr, actor: &str, detail: String) -> Refusal {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if g.windows.len() >= ADDRESSES && !g.windows.contains_key(&peer) {
            g.windows.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
        }
        if g.windows.len() >= ADDRESSES && !g.windows.contains_key(&peer) {
            g.uncounted += 1;
            m::API_REFUSALS.with_label_values(&["limited"]).inc();
            return Refusal::Limited;
        }
        let w = g.windows.entry(peer).or_insert((now, 0));
        if now.duration_since(w.0) >= WINDOW {
            *w = (now, 0);
        }
        w.1 += 1;
        if w.1 > REFUSALS_PER_WINDOW {
            *g.limited.entry(peer).or_default() += 1;
            m::API_REFUSALS.with_label_values(&["limited"]).inc();
            return Refusal::Limited;
        }
        m::API_REFUSALS.with_label_values(&["answered"]).inc();
        if g.rows.len() < PENDING {
            g.rows.push(Row { actor: actor.to_string(), detail: format!("{detail} (from {peer})") });
        } else {
            g.uncounted += 1;
        }
        Refusal::Answered
    }

    /// The rows waiting, with one summary row per limited address; empties
    /// the queue.
    pub fn take(&self) -> Vec<Row> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut rows = std::mem::take(&mut g.rows);
        let mut limited: Vec<_> = g.limited.drain().collect();
        limited.sort();
        for (peer, n) in limited {
            rows.push(Row {
                actor: "api:anonymous".into(),
                detail: format!("{n} more refusal(s) from {peer} answered 429 (over {REFUSALS_PER_WINDOW} a minute)"),
            });
        }
        let uncounted = std::mem::take(&mut g.uncounted);
        if uncounted > 0 {
            rows.push(Row {
                actor: "api:anonymous".into(),
                detail: format!("{uncounted} more refusal(s) not written one by one (too many addresses or rows at once)"),
            });
        }
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_its_share_then_429_and_one_summary_row() {
        let g = Guard::default();
        let t0 = Instant::now();
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        for i in 0..REFUSALS_PER_WINDOW {
            assert_eq!(g.refuse_at(t0, a, "api:anonymous", format!("GET / → 401 #{i}")), Refusal::Answered);
        }
        let r = g.refuse_at(t0 + Duration::from_secs(20), a, "api:anonymous", "GET / → 401".into());
        assert_eq!(r, Refusal::Limited);
        // another address is not held back by the first
        assert_eq!(g.refuse_at(t0, b, "api:anonymous", "GET / → 401".into()), Refusal::Answered);
        let rows = g.take();
        assert_eq!(rows.len(), REFUSALS_PER_WINDOW as usize + 2, "{rows:#?}");
        assert!(rows[0].detail.ends_with("(from 192.0.2.1)"), "{rows:#?}");
        assert!(rows.last().unwrap().detail.starts_with("1 more refusal(s) from 192.0.2.1 answered 429"), "{rows:#?}");
        assert!(g.take().is_empty());
        // a new window, a new share
        assert_eq!(g.refuse_at(t0 + WINDOW, a, "api:anonymous", "x".into()), Refusal::Answered);
    }

    #[test]
    fn too_many_addresses_are_limited_not_remembered() {
        let g = Guard::default();
        let t0 = Instant::now();
        for i in 0..ADDRESSES as u32 {
            let ip = IpAddr::from(std::net::Ipv6Addr::from(u128::from(i) + 1));
            assert_eq!(g.refuse_at(t0, ip, "api:anonymous", String::new()), Refusal::Answered);
        }
        let one_more = IpAddr::from(std::net::Ipv6Addr::from(u128::MAX));
        assert!(matches!(g.refuse_at(t0, one_more, "api:anonymous", String::new()), Refusal::Limited));
        let rows = g.take();
        assert_eq!(rows.len(), PENDING + 1);
        assert!(rows.last().unwrap().detail.contains("not written one by one"));
        // once the windows are old, new addresses are followed again
        assert_eq!(g.refuse_at(t0 + WINDOW, one_more, "api:anonymous", String::new()), Refusal::Answered);
    }
}
