//! Condemned lists: the packs a prune will delete once a grace period has
//! passed (see [`crate::retention`] for why two steps make deleting safe
//! against an export running meanwhile).
//!
//! A list is signed by the controller's key: a provider can plant any object
//! under `prune/`, and a list it forged, naming the packs of a running export
//! with a time long past, would otherwise make the next prune delete them
//! from both providers. The controller's prune acts on the lists its own key
//! signed and reports the others; the agent, when its configuration names
//! the controller's key (`controller_keys`), honours only those too, and
//! otherwise honours every list it can read (a list it cannot read is
//! skipped and reported, never the end of an export).
// Parses what a provider (or a source) serves: total, no panic (see the
// threat model in the README).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing))]
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::keys::TrustedKey;
use crate::object::ObjectRef;
use crate::provider::Replica;
use crate::signed::{Kind, Signed};

/// 2: signed by the controller, bound to its tenant and name (1 was unsigned).
pub const FORMAT: u32 = 2;

/// One prune's list of packs to delete once the grace period has passed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condemned {
    pub format: u32,
    #[serde(default)]
    pub tenant: String,
    /// `<time>-<random>`: the list is `prune/<name>.condemned`.
    #[serde(default)]
    pub name: String,
    pub condemned_at: DateTime<Utc>,
    /// The grace period, in seconds, from `condemned_at` to the earliest deletion.
    pub grace_seconds: u64,
    pub packs: Vec<ObjectRef>,
}

impl Signed for Condemned {
    const KIND: Kind = Kind::Condemned;
    /// A list names packs: 64 MiB holds about half a million.
    const MAX_LEN: u64 = 64 << 20;

    fn signed_at(&self) -> DateTime<Utc> {
        self.condemned_at
    }

    fn tenant(&self) -> &str {
        &self.tenant
    }

    fn stored_at(&self) -> Option<String> {
        Some(key(&self.name))
    }
}

impl Condemned {
    /// When a prune may delete these packs.
    pub fn deletable_from(&self) -> DateTime<Utc> {
        self.after(self.grace_seconds.saturating_mul(1000))
    }

    /// Until when an export that reused one of these packs may still commit.
    pub fn commit_deadline(&self) -> DateTime<Utc> {
        self.after(self.grace_seconds.saturating_mul(500))
    }

    /// `condemned_at` plus `ms` milliseconds, the end of time at the most.
    fn after(&self, ms: u64) -> DateTime<Utc> {
        let d = chrono::Duration::try_milliseconds(ms.min(i64::MAX as u64) as i64).unwrap_or(chrono::Duration::MAX);
        self.condemned_at.checked_add_signed(d).unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// Merges another copy of this list: the packs of both, the earlier
    /// condemnation and the shorter grace (what holds an export back most).
    pub fn tighten(&mut self, other: Condemned) {
        self.condemned_at = self.condemned_at.min(other.condemned_at);
        self.grace_seconds = self.grace_seconds.min(other.grace_seconds);
        for p in other.packs {
            if !self.packs.iter().any(|q| q.key == p.key) {
                self.packs.push(p);
            }
        }
    }

    /// A list's body, whether signed or not, without checking who signed it:
    /// for an agent that was not given the controller's key.
    pub fn read_unverified(bytes: &[u8], key: &str) -> crate::Result<Condemned> {
        let body = match bytes.windows(2).position(|w| w == b"\n\n") {
            Some(i) if bytes.starts_with(b"bascule-signed v1 ") => bytes.get(i + 2..).unwrap_or_default(),
            _ => bytes,
        };
        serde_json::from_slice(body).map_err(|e| crate::Error::Body { key: key.into(), reason: e.to_string() })
    }
}

/// `prune/<name>.condemned`.
pub fn key(name: &str) -> String {
    format!("{}{name}.condemned", crate::layout::PRUNE)
}

/// The name of a new condemned list (`<time>-<random>`).
pub fn new_name(at: DateTime<Utc>) -> String {
    crate::layout::new_snapshot_name(at)
}

/// Whose lists to honour.
#[derive(Debug, Clone, Copy)]
pub enum Trust<'a> {
    /// Only lists one of these keys signed, for this tenant.
    Signed { keys: &'a [TrustedKey], tenant: &'a str },
    /// Every list that can be read (an agent that does not know the controller's key).
    Readable,
}

/// The lists the providers hold, and those refused.
#[derive(Debug, Default)]
pub struct Lists {
    /// Key → the list (from the first provider whose copy passed).
    pub lists: BTreeMap<String, Condemned>,
    /// (provider, key, why): copies that failed their check; a list whose
    /// every copy failed is not in `lists`.
    pub refused: Vec<(String, String, String)>,
}

/// Every condemned list any of `replicas` holds that `trust` accepts. A
/// copy that fails is reported and taken from another provider; a list no
/// provider holds a good copy of is left out, reported. An error only when
/// no provider could be listed.
pub async fn read(replicas: &[Replica], trust: Trust<'_>) -> crate::Result<Lists> {
    let mut out = Lists::default();
    let mut listed = false;
    let mut last_err = None;
    let mut seen: BTreeMap<String, ()> = BTreeMap::new();
    for r in replicas {
        match r.list(crate::layout::PRUNE).await {
            Ok(k) => {
                listed = true;
                seen.extend(k.into_keys().filter(|k| k.ends_with(".condemned")).map(|k| (k, ())));
            }
            Err(e) => last_err = Some(e),
        }
    }
    if !listed {
        return Err(last_err.unwrap_or(crate::Error::Missing { key: crate::layout::PRUNE.into() }));
    }
    for key in seen.into_keys() {
        for r in replicas {
            let got = match r.get(&key, Condemned::MAX_LEN).await {
                Ok(Some(bytes)) => match trust {
                    Trust::Signed { keys, tenant } => <Condemned as Signed>::open(&bytes, keys, tenant, &key),
                    Trust::Readable => Condemned::read_unverified(&bytes, &key),
                },
                Ok(None) => continue,
                Err(e) => Err(e),
            };
            match got {
                // a signed list is the same everywhere: the first good copy will do
                Ok(list) if matches!(trust, Trust::Signed { .. }) => {
                    out.lists.insert(key.clone(), list);
                    break;
                }
                // unsigned copies may differ (one provider may have edited
                // its own): every copy counts, the strictest of them wins
                Ok(list) => match out.lists.get_mut(&key) {
                    Some(seen) => seen.tighten(list),
                    None => {
                        out.lists.insert(key.clone(), list);
                    }
                },
                Err(e) => out.refused.push((r.provider.clone(), key.clone(), e.to_string())),
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn list(grace: u64) -> Condemned {
        let at = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        Condemned { format: FORMAT, tenant: "t".into(), name: new_name(at), condemned_at: at, grace_seconds: grace, packs: vec![] }
    }

    #[test]
    fn copies_that_differ_are_merged_to_the_strictest() {
        let mut a = list(3600);
        a.packs = vec![ObjectRef::of("packs/aa/aa", b"1"), ObjectRef::of("packs/bb/bb", b"2")];
        // another provider's copy: a pack removed, a grace lengthened, a later time
        let mut b = list(u64::MAX);
        b.condemned_at = a.condemned_at + chrono::Duration::days(1);
        b.packs = vec![ObjectRef::of("packs/bb/bb", b"2")];
        let mut merged = b.clone();
        merged.tighten(a.clone());
        assert_eq!(merged.grace_seconds, 3600);
        assert_eq!(merged.condemned_at, a.condemned_at);
        let mut keys: Vec<&str> = merged.packs.iter().map(|p| p.key.as_str()).collect();
        keys.sort();
        assert_eq!(keys, ["packs/aa/aa", "packs/bb/bb"]);
        assert_eq!(merged.commit_deadline(), a.commit_deadline());
    }

    #[test]
    fn condemned_deadlines() {
        let c = list(3600);
        assert_eq!(c.deletable_from(), c.condemned_at + chrono::Duration::hours(1));
        assert_eq!(c.commit_deadline(), c.condemned_at + chrono::Duration::minutes(30));
        // a hostile grace cannot overflow the arithmetic
        let _ = list(u64::MAX).deletable_from();
        let _ = list(u64::MAX).commit_deadline();
    }

    #[test]
    fn a_list_reads_signed_or_not_but_verifies_only_signed_by_a_trusted_key() {
        let c = list(60);
        let controller = crate::keys::AgentKey::generate();
        let signed = c.sign(&controller);
        let k = key(&c.name);
        assert_eq!(Condemned::read_unverified(&signed, &k).unwrap(), c);
        assert_eq!(Condemned::read_unverified(&serde_json::to_vec(&c).unwrap(), &k).unwrap(), c);
        let trusted = [TrustedKey::from(controller.verify_key())];
        assert_eq!(<Condemned as Signed>::open(&signed, &trusted, "t", &k).unwrap(), c);
        let forged = c.sign(&crate::keys::AgentKey::generate());
        assert!(<Condemned as Signed>::open(&forged, &trusted, "t", &k).is_err(), "signed by another key");
        assert!(<Condemned as Signed>::open(&serde_json::to_vec(&c).unwrap(), &trusted, "t", &k).is_err(), "unsigned");
        assert!(Condemned::read_unverified(b"\xff\xfe garbage", &k).is_err());
    }
}
