//! Both providers' listings of a tenant: objects one lacks, the newest
//! snapshot of each kind, the projected recovery time.
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use bascule_core::layout;
use bascule_core::manifest::Manifest;
use bascule_core::provider::Provider;
use bascule_core::signed::Signed;

use super::Watched;
use crate::serve::metrics::{self as m, ts};

/// Lists the tenant on both providers: objects one lacks, and the newest
/// snapshot of each kind on each (kinds from the signed manifests).
pub(super) async fn compare_listings(t: &mut Watched, providers: &[Provider], state_dir: &Path) {
    let mut sets: Vec<Option<BTreeSet<String>>> = Vec::new();
    let mut wal: Option<Vec<(u64, chrono::DateTime<chrono::Utc>)>> = None;
    for (p, r) in providers.iter().zip(&t.tenant.replicated.replicas) {
        match r.list_meta("").await {
            Ok(l) => {
                if wal.is_none() {
                    let stored = l.iter().filter(|(k, _)| k.starts_with(bascule_core::wal::WAL) && !k.ends_with(".rec"));
                    wal = Some(stored.map(|(_, v)| *v).collect());
                }
                sets.push(Some(l.into_keys().filter(|k| k != layout::HEAD && !k.contains(".tmp")).collect()))
            }
            Err(e) => {
                tracing::warn!(tenant = %t.name, provider = %p.name, error = %e, "Cannot list");
                sets.push(None);
            }
        }
    }
    let all: BTreeSet<&String> = sets.iter().flatten().flatten().collect();
    for (i, p) in providers.iter().enumerate() {
        let Some(set) = &sets[i] else { continue };
        let missing = all.iter().filter(|k| !set.contains(k.as_str())).count();
        m::OBJECTS_MISSING.with_label_values(&[&t.name, &p.name]).set(missing as i64);
        t.per[i].view.objects_missing = Some(missing);
    }
    // kinds of snapshots not seen before
    for key in all.iter().filter(|k| k.ends_with(".manifest")) {
        let Some(name) = layout::manifest_name(key) else { continue };
        if t.snapshots.contains_key(name) {
            continue;
        }
        for (i, p) in providers.iter().enumerate() {
            if !sets[i].as_ref().is_some_and(|s| s.contains(key.as_str())) {
                continue;
            }
            let Ok(Some(b)) = t.tenant.replicated.replicas[i].get(key, Manifest::MAX_LEN).await else { continue };
            match t.tenant.open_manifest(name, &b) {
                Ok(man) => {
                    t.snapshots.insert(name.to_string(), (man.kind.to_string(), man.started_at, man.source_bytes));
                    break;
                }
                Err(_) => {
                    m::INTEGRITY_FAILURES.with_label_values(&[&t.name, &p.name, "bad_manifest"]).inc();
                }
            }
        }
    }
    for (i, p) in providers.iter().enumerate() {
        let Some(set) = &sets[i] else { continue };
        let mut newest: BTreeMap<&str, chrono::DateTime<chrono::Utc>> = BTreeMap::new();
        for (name, (kind, at, _)) in &t.snapshots {
            if set.contains(&layout::manifest(name)) {
                let e = newest.entry(kind.as_str()).or_insert(*at);
                *e = (*e).max(*at);
            }
        }
        for (kind, at) in newest {
            m::LAST_SNAPSHOT.with_label_values(&[&t.name, &p.name, kind]).set(ts(at));
        }
    }
    project(t, state_dir, wal.unwrap_or_default());
}

/// The projected recovery time: the last restore's throughput applied to
/// the newest base backup and the WAL since (or the newest export).
fn project(t: &mut Watched, state_dir: &Path, wal: Vec<(u64, chrono::DateTime<chrono::Utc>)>) {
    let newest = |base: bool| {
        t.snapshots.values().filter(|(kind, _, _)| (kind == "basebackup") == base).max_by_key(|(_, at, _)| *at).map(|(_, at, b)| (*b, *at))
    };
    let bytes = crate::projection::bytes_to_restore(newest(true), newest(false).map(|(b, _)| b), wal.into_iter());
    t.projected = match (crate::projection::load(state_dir, &t.name), bytes) {
        (Some(rate), Some(b)) => Some(crate::projection::keep(state_dir, &t.name, &rate, b)),
        _ => None,
    };
    match t.projected {
        Some(p) => m::PROJECTED_RTO.with_label_values(&[&t.name]).set(p),
        None => drop(m::PROJECTED_RTO.remove_label_values(&[&t.name])),
    }
}
