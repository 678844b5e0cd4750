//! Manifests no provider holds a copy of that verifies. Retention goes on
//! with the others; what such a manifest might need is not deleted meanwhile:
//!
//! * signed by the tenant's key but unreadable here (a newer format, a bad
//!   binding): every pack and index it names is kept, as long as it is there
//!   (an older controller must never delete what a newer agent needs);
//! * not signed by the tenant's key (damaged on every provider, or planted):
//!   what it names is kept for `prune.quarantine` from the time this
//!   controller first saw it, so that an operator can look (`verify`,
//!   `repair`); then it is only reported. A planted object can delay a
//!   deletion by that long, never stop retention.
//!
//! Every prune reports them, and `serve` counts them
//! (`bascule_prune_unverified_manifests`).
// Parses what a provider (or a source) serves: total, no panic (see the
// threat model in the README).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing))]
use std::collections::BTreeMap;
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

/// The first copy whose signature is one of `keys` and that says it is this
/// manifest, else the first readable body.
async fn best_copy(t: &Tenant, name: &str, keys: &[VerifyKey]) -> (bool, Option<serde_json::Value>) {
    let key = layout::manifest(name);
    let mut unsigned = None;
    for r in &t.replicated.replicas {
        let Ok(Some(bytes)) = r.get(&key, Manifest::MAX_LEN).await else { continue };
        if let Ok((v, _)) = signed::open::<serde_json::Value>(Kind::Manifest, &bytes, keys, &key) {
            if bound(&v, &t.name, name) {
                return (true, Some(v));
            }
        }
        if unsigned.is_none() {
            let body = bytes.windows(2).position(|w| w == b"\n\n").and_then(|i| bytes.get(i + 2..)).unwrap_or(&bytes);
            unsigned = serde_json::from_slice(body).ok();
        }
    }
    (false, unsigned)
}

/// When this controller first saw each unverifiable manifest of the tenant.
fn first_seen_path(state_dir: &std::path::Path, tenant: &str) -> PathBuf {
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
    let path = first_seen_path(state_dir, &t.name);
    let mut seen: BTreeMap<String, DateTime<Utc>> = match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_default(),
        Err(_) => BTreeMap::new(),
    };
    let keys: Vec<VerifyKey> = t.keys.iter().map(|k| k.key).collect();
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    for name in names {
        let why = match t.manifest(&name).await {
            Ok((m, _)) => {
                good.push(m);
                continue;
            }
            Err(e) => e.to_string(),
        };
        let (signed, body) = best_copy(t, &name, &keys).await;
        let mut names = vec![layout::index(&name)];
        if let Some(v) = &body {
            named_objects(v, &mut names);
        }
        names.sort();
        names.dedup();
        let first = *seen.entry(name.clone()).or_insert(now);
        let until = (!signed).then(|| first + quarantine);
        bad.push(Unverified { name, why, signed, names, until });
    }
    seen.retain(|n, _| bad.iter().any(|u| &u.name == n));
    bascule_core::config::write_atomic(&path, &serde_json::to_vec_pretty(&seen)?)?;
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
    fn a_quarantine_ends_a_signed_body_does_not() {
        let now = Utc::now();
        let u = |signed, until| Unverified { name: "n".into(), why: String::new(), signed, names: vec![], until };
        assert!(u(true, None).protects(now + chrono::Duration::days(3650)));
        assert!(u(false, Some(now + chrono::Duration::days(7))).protects(now));
        assert!(!u(false, Some(now)).protects(now + chrono::Duration::seconds(1)));
    }
}
