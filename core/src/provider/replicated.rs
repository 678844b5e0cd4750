//! Writing to every provider, reading from whichever holds a good copy.
//!
//! The policy of a write to both providers lives here, once, for exports,
//! HEAD writes, WAL records, reports and restore-test results alike: a
//! [`Writer`] sends each object to every provider still up in its session;
//! a provider whose write fails is taken out of the session (said once, with
//! why) and the session goes on with the other; a write that no provider
//! took is an error. What each provider missed is in [`Writer::outcome`],
//! for the caller's backlog.
// Parses what a provider (or a source) serves: total, no panic (see the
// threat model in the README).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing))]
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use futures::future::join_all;

use super::Replica;
use crate::{Error, Result};

/// One result per provider, in the order of [`Replicated::replicas`].
pub type PerProvider<T> = Vec<(String, Result<T>)>;

#[derive(Debug, Clone)]
pub struct Replicated {
    pub replicas: Vec<Replica>,
}

impl Replicated {
    pub fn new(replicas: Vec<Replica>) -> Self {
        Replicated { replicas }
    }

    /// A write session over every provider.
    pub fn writer(&self) -> Writer {
        self.writer_without(vec![None; self.replicas.len()])
    }

    /// A write session over the providers whose entry in `down` is `None`
    /// (the others are out from the start, for the reason given).
    pub fn writer_without(&self, down: Vec<Option<String>>) -> Writer {
        Writer {
            replicas: self.replicas.clone(),
            up: down.iter().map(|d| AtomicBool::new(d.is_none())).collect(),
            why_down: Mutex::new(down),
        }
    }

    /// A write session over provider `i` only (each provider's WAL shipping
    /// goes at its own pace).
    pub fn writer_to(&self, i: usize) -> Writer {
        let down = (0..self.replicas.len()).map(|j| (j != i).then(|| "not part of this write".to_string())).collect();
        self.writer_without(down)
    }

    /// Reads `key` (at most `max` bytes) from the first provider (starting
    /// at `start`, so that parallel reads spread over both) whose copy passes
    /// `check`; falls back to the next when a copy is missing, unreadable,
    /// too long or fails the check. Returns the checked value and the
    /// provider that served it.
    pub async fn get_checked<T>(&self, key: &str, max: u64, start: usize, check: impl Fn(&str, Bytes) -> Result<T>) -> Result<(T, String)> {
        self.read_checked(key, Read::Whole(max), start, check).await
    }

    /// The object `o` names, from the first provider whose copy has its
    /// length and hash.
    pub async fn get_ref_checked(&self, o: &crate::object::ObjectRef, start: usize) -> Result<(Bytes, String)> {
        self.get_checked(&o.key, o.len, start, |p, b| o.check(p, &b).map(|()| b)).await
    }

    /// [`Replicated::get_checked`] for bytes `range` of the object.
    pub async fn get_range_checked<T>(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
        start: usize,
        check: impl Fn(&str, Bytes) -> Result<T>,
    ) -> Result<(T, String)> {
        self.read_checked(key, Read::Range(range), start, check).await
    }

    async fn read_checked<T>(&self, key: &str, read: Read, start: usize, check: impl Fn(&str, Bytes) -> Result<T>) -> Result<(T, String)> {
        let n = self.replicas.len();
        let mut reasons = Vec::new();
        for r in self.replicas.iter().cycle().skip(start % n.max(1)).take(n) {
            let got = match &read {
                Read::Whole(max) => r.get(key, *max).await,
                Read::Range(range) => r.get_range(key, range.clone()).await,
            };
            match got {
                Ok(Some(bytes)) => match check(&r.provider, bytes) {
                    Ok(v) => {
                        if !reasons.is_empty() {
                            tracing::warn!(key, provider = %r.provider, failed = %reasons.join("; "), "Served from another provider after a bad copy");
                        }
                        return Ok((v, r.provider.clone()));
                    }
                    Err(e) => reasons.push(format!("{}: {e}", r.provider)),
                },
                Ok(None) => reasons.push(format!("{}: missing", r.provider)),
                Err(e) => reasons.push(format!("{}: {e}", r.provider)),
            }
        }
        if reasons.iter().all(|r| r.ends_with(": missing")) {
            return Err(Error::Missing { key: key.into() });
        }
        Err(Error::NoGoodCopy { key: key.into(), reasons: reasons.join("; ") })
    }
}

/// What a read asks for: a whole object of at most so many bytes, or a range.
enum Read {
    Whole(u64),
    Range(std::ops::Range<u64>),
}

/// A write session over the providers: see the module's documentation.
#[derive(Debug)]
pub struct Writer {
    replicas: Vec<Replica>,
    up: Vec<AtomicBool>,
    why_down: Mutex<Vec<Option<String>>>,
}

impl Writer {
    /// Which providers are still up, in the order of the replicas.
    pub fn up(&self) -> Vec<bool> {
        self.up.iter().map(|u| u.load(Ordering::SeqCst)).collect()
    }

    pub fn any_up(&self) -> bool {
        self.up.iter().any(|u| u.load(Ordering::SeqCst))
    }

    pub fn replicas(&self) -> &[Replica] {
        &self.replicas
    }

    /// Takes provider `i` out of the session (said once, with why).
    pub fn take_down(&self, i: usize, why: String) {
        if self.up.get(i).is_some_and(|u| u.swap(false, Ordering::SeqCst)) {
            let provider = self.replicas.get(i).map(|r| r.provider.as_str()).unwrap_or_default();
            tracing::error!(provider = %provider, error = %why, "Provider failed; continuing on the other one (degraded)");
            if let Some(w) = self.why_down.lock().unwrap_or_else(|e| e.into_inner()).get_mut(i) {
                *w = Some(why);
            }
        }
    }

    /// Why each provider that is down went down: `a: …; b: …`.
    pub fn down_reasons(&self) -> String {
        let why = self.why_down.lock().unwrap_or_else(|e| e.into_inner());
        self.replicas
            .iter()
            .zip(why.iter())
            .filter_map(|(r, w)| w.as_ref().map(|w| format!("{}: {w}", r.provider)))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Per provider: `None` when it took every write of the session, else why not.
    pub fn outcome(&self) -> Vec<(String, Option<String>)> {
        let why = self.why_down.lock().unwrap_or_else(|e| e.into_inner()).clone();
        self.replicas.iter().zip(why).map(|(r, w)| (r.provider.clone(), w)).collect()
    }

    /// Whether every provider took every write.
    pub fn complete(&self) -> bool {
        self.up.iter().all(|u| u.load(Ordering::SeqCst))
    }

    /// Writes `bytes` to every provider still up, concurrently; a failure
    /// takes that provider out. An error when no provider holds it.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<()> {
        self.put_to(key, bytes, &self.up(), false).await
    }

    /// [`Writer::put`] for an object whose name is its content (a pack): it
    /// is created only where absent, and a copy already there is kept once
    /// it is checked to be the same bytes.
    pub async fn put_new(&self, key: &str, bytes: Bytes) -> Result<()> {
        self.put_to(key, bytes, &self.up(), true).await
    }

    /// Writes to the providers in `which` that are still up.
    pub async fn put_to(&self, key: &str, bytes: Bytes, which: &[bool], create: bool) -> Result<()> {
        let up = self.up();
        let targets = self.replicas.iter().enumerate().filter(|(i, _)| which.get(*i) == Some(&true) && up.get(*i) == Some(&true));
        let puts = targets.map(|(i, r)| {
            let bytes = bytes.clone();
            async move { (i, if create { r.put_new(key, bytes).await } else { r.put(key, bytes).await }) }
        });
        let mut written = 0;
        for (i, result) in join_all(puts).await {
            match result {
                Ok(()) => written += 1,
                Err(e) => self.take_down(i, e.to_string()),
            }
        }
        if written == 0 {
            return Err(Error::Unwritten { key: key.into(), reasons: self.down_reasons() });
        }
        Ok(())
    }
}
