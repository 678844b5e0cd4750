//! Manifests no provider holds a copy of that verifies. Retention goes on
//! with the others; what such a manifest might need is not deleted meanwhile:
//!
//! * signed by the tenant's key but unreadable here (a newer format, a bad
//!   binding): every pack and index it names is kept, as long as it is there
//!   (an older controller must never delete what a newer agent needs);
//! * not signed by the tenant's key (damaged on every provider, or planted):
//!   what it names is kept for `prune.quarantine`, so that an operator can
//!   look (`verify`, `repair`); then it is only reported. The quarantine
//!   counts from the first of a series of such manifests (a series ends
//!   only with a quarantine without any): planting new names, or hiding one
//!   for a prune, does not start it again. A planted object can delay a
//!   deletion by that long, never stop retention. Only the first 4 MiB of
//!   such a body are read, and a million objects kept at most.
//!
//! Every prune reports them, and `serve` counts them
//! (`bascule_prune_unverified_manifests`).
// Parses what a provider (or a source) serves: total, no panic (see the
// threat model in the README).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing))]
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use bascule_core::keys::VerifyKey;
use bascule_core::layout;
use bascule_core::manifest::Manifest;
use bascule_core::signed::{self, Kind, Signed};
use chrono::{DateTime, Utc};

use crate::tenant::Tenant;

/// A manifest that verifies on no provider, and what the prune keeps for it.
#[derive(Debug)]
pub struct Unverified {
    pub name: String,
    pub why: String,
    /// Its signature is the tenant's (only its body could not be used).
    pub signed: bool,
    /// Packs and indexes it names.
    pub names: Vec<String>,
    /// Kept until then (`None`: as long as it is there).
    pub until: Option<DateTime<Utc>>,
}

impl Unverified {
    /// Whether what it names is still kept at `now`.
    pub fn protects(&self, now: DateTime<Utc>) -> bool {
        self.until.is_none_or(|u| now < u)
    }
}

/// Every string of a JSON value that names a pack or an index.
fn named_objects(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) if s.starts_with(layout::PACKS) || (s.starts_with(layout::SNAPSHOTS) && s.ends_with(".index")) => {
            out.push(s.clone())
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| named_objects(x, out)),
        serde_json::Value::Object(o) => o.values().for_each(|x| named_objects(x, out)),
        _ => {}
    }
}

/// Whether a signed body says it is `name` of `tenant`: a manifest the
/// tenant signed, copied by a provider under another name or tenant, is no
/// more trusted than a planted one.
fn bound(v: &serde_json::Value, tenant: &str, name: &str) -> bool {
    v.get("tenant").and_then(|t| t.as_str()) == Some(tenant) && v.get("name").and_then(|n| n.as_str()) == Some(name)
}

/// The most bytes of a body not signed by the tenant that are read for the
/// names it gives (a planted body names what its author likes).
const MAX_UNSIGNED_BODY: usize = 4 << 20;
/// The most objects unverifiable manifests may keep, all together.
const MAX_PROTECTED: usize = 1_000_000;

/// The first copy whose signature is one of `keys` and that says it is this
/// manifest (its body), else the first readable body not over
/// [`MAX_UNSIGNED_BODY`], if the caller wants it.
async fn best_copy(t: &Tenant, name: &str, keys: &[VerifyKey], unsigned_body: bool) -> (bool, Option<serde_json::Value>) {
    let key = layout::manifest(name);
    let mut unsigned = None;
    for r in &t.replicated.replicas {
        let Ok(Some(bytes)) = r.get(&key, Manifest::MAX_LEN).await else { continue };
        if let Ok((v, _)) = signed::open::<serde_json::Value>(Kind::Manifest, &bytes, keys, &key) {
            if bound(&v, &t.name, name) {
                return (true, Some(v));
            }
        }
        if unsigned_body && unsigned.is_none() {
            let body = bytes.windows(2).position(|w| w == b"\n\n").and_then(|i| bytes.get(i + 2..)).unwrap_or(&bytes);
            if body.len() <= MAX_UNSIGNED_BODY {
                unsigned = serde_json::from_slice(body).ok();
            }
        }
    }
    (false, unsigned)
}

/// What this controller remembers of a tenant's unverifiable manifests that
/// the tenant did not sign (`state_dir/<tenant>.unverified.json`).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct Watch {
    /// Since when prunes have found such manifests, with no break as long
    /// as a quarantine: the quarantine of all of them counts from then, so
    /// that new names (or one hidden for a prune) do not start it again.
    since: Option<DateTime<Utc>>,
    /// When a prune last found one.
    last: Option<DateTime<Utc>>,
}

impl Watch {
    fn load(path: &std::path::Path) -> Watch {
        std::fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    /// Until when what such manifests name is kept, if a prune at `now` finds one.
    fn end(&self, now: DateTime<Utc>, quarantine: chrono::Duration) -> DateTime<Utc> {
        let start = match (self.since, self.last) {
            (Some(since), Some(last)) if now - last <= quarantine => since,
            _ => now,
        };
        start + quarantine
    }

    /// A prune at `now` found one.
    fn found(&mut self, now: DateTime<Utc>, quarantine: chrono::Duration) {
        self.since = Some(self.end(now, quarantine) - quarantine);
        self.last = Some(now);
    }
}

fn watch_path(state_dir: &std::path::Path, tenant: &str) -> PathBuf {
    state_dir.join(format!("{tenant}.unverified.json"))
}

/// Sorts the tenant's manifests into those that verify and those that do not.
pub(super) async fn sort(
    t: &Tenant,
    state_dir: &std::path::Path,
    quarantine: chrono::Duration,
    names: impl Iterator<Item = String>,
    now: DateTime<Utc>,
) -> anyhow::Result<(Vec<Manifest>, Vec<Unverified>)> {
    let path = watch_path(state_dir, &t.name);
    let mut watch = Watch::load(&path);
    let end = watch.end(now, quarantine);
    let keys: Vec<VerifyKey> = t.keys.iter().map(|k| k.key).collect();
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    let mut protected = 0;
    for name in names {
        let why = match t.manifest(&name).await {
            Ok((m, _)) => {
                good.push(m);
                continue;
            }
            Err(e) => e.to_string(),
        };
        // what an unsigned body names is read only while the quarantine lasts
        let (signed, body) = best_copy(t, &name, &keys, now < end).await;
        let mut names = vec![layout::index(&name)];
        if let Some(v) = &body {
            named_objects(v, &mut names);
        }
        names.sort();
        names.dedup();
        names.truncate(MAX_PROTECTED.saturating_sub(protected).max(1));
        protected += names.len();
        let until = (!signed).then_some(end);
        bad.push(Unverified { name, why, signed, names, until });
    }
    if bad.iter().any(|u| !u.signed) {
        watch.found(now, quarantine);
    }
    bascule_core::config::write_atomic(&path, &serde_json::to_vec_pretty(&watch)?)?;
    Ok((good, bad))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pack_and_index_a_body_names_is_found() {
        let v: serde_json::Value = serde_json::json!({
            "index": { "key": "snapshots/a.index" },
            "objects": [{ "key": "packs/ab/abc" }, { "key": "packs/cd/cde", "len": 3 }],
            "future": { "nested": ["packs/ef/efg", "not/a/pack"] }
        });
        let mut out = Vec::new();
        named_objects(&v, &mut out);
        out.sort();
        assert_eq!(out, ["packs/ab/abc", "packs/cd/cde", "packs/ef/efg", "snapshots/a.index"]);
    }

    #[test]
    fn a_body_is_bound_to_its_tenant_and_name() {
        let v = serde_json::json!({ "tenant": "mairie", "name": "20260101T000000Z-aa", "future": 1 });
        assert!(bound(&v, "mairie", "20260101T000000Z-aa"));
        assert!(!bound(&v, "mairie", "20260101T000000Z-bb"), "copied under another name");
        assert!(!bound(&v, "voisine", "20260101T000000Z-aa"), "copied to another tenant");
        assert!(!bound(&serde_json::json!({ "tenant": "mairie" }), "mairie", "20260101T000000Z-aa"));
    }

    #[test]
    fn the_quarantine_counts_from_the_first_of_a_series_of_plants() {
        let q = chrono::Duration::days(7);
        let day = |d: i64| "2026-01-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap() + chrono::Duration::days(d);
        let mut w = Watch::default();
        assert_eq!(w.end(day(0), q), day(7), "a first plant: a quarantine from now");
        w.found(day(0), q);
        // new names every day, one prune without any: still the same quarantine
        for d in [1, 2, 4, 6] {
            assert_eq!(w.end(day(d), q), day(7), "day {d}");
            w.found(day(d), q);
        }
        assert_eq!(w.end(day(8), q), day(7), "past it, plants keep nothing");
        w.found(day(8), q);
        // only a break as long as a quarantine starts a new one
        assert_eq!(w.end(day(15), q), day(7));
        assert_eq!(w.end(day(16), q), day(23));
        let saved: Watch = serde_json::from_slice(&serde_json::to_vec(&w).unwrap()).unwrap();
        assert_eq!(saved, w);
    }

    #[test]
    fn a_quarantine_ends_a_signed_body_does_not() {
        let now = Utc::now();
        let u = |signed, until| Unverified { name: "n".into(), why: String::new(), signed, names: vec![], until };
        assert!(u(true, None).protects(now + chrono::Duration::days(3650)));
        assert!(u(false, Some(now + chrono::Duration::days(7))).protects(now));
        assert!(!u(false, Some(now)).protects(now + chrono::Duration::seconds(1)));
    }
}
