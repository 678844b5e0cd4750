//! Step 2 of a prune: per job, the retention in force (the controller's
//! merged with what the agent signed) decides which snapshots stay; the
//! others lose their manifest, then their sealed index. It also finds the
//! base backup from which the WAL is kept whole.
use std::collections::{BTreeMap, BTreeSet, HashSet};

use anyhow::Context;
use bascule_core::layout;
use bascule_core::manifest::{Manifest, SnapshotKind};
use bascule_core::retention::{self, Keep, Retention};
use chrono::{DateTime, Utc};

use super::{PruneReport, SnapshotFate};
use crate::config::ControllerConfig;
use crate::tenant::Tenant;

/// Of the current cut and base backup `b`, the one that starts earlier.
fn older_cut<'a>(cut: Option<&'a Manifest>, b: &'a Manifest) -> Option<&'a Manifest> {
    let start = |m: &Manifest| m.wal.as_ref().map(|w| (w.timeline, w.start));
    match cut {
        Some(c) if start(c) <= start(b) => Some(c),
        _ => Some(b),
    }
}

/// Snapshot name → why it stays.
type Kept = BTreeMap<String, BTreeSet<Keep>>;

/// The snapshots each job's policy keeps, with why, and the base backup
/// the WAL is kept from.
fn kept_by_policy<'a>(
    config: &ControllerConfig,
    t: &Tenant,
    manifests: &'a [Manifest],
    now: DateTime<Utc>,
    report: &mut PruneReport,
) -> anyhow::Result<(Kept, Option<&'a Manifest>)> {
    let mut jobs: BTreeMap<String, Vec<&Manifest>> = BTreeMap::new();
    for m in manifests {
        jobs.entry(m.job.clone()).or_default().push(m);
    }
    let configured = config.retention_of(&t.name);
    let mut kept = Kept::new();
    // the base backup from which the WAL is kept whole
    let mut wal_cut: Option<&Manifest> = None;
    for (job, ms) in &jobs {
        let Some(newest) = ms.iter().max_by_key(|m| (m.started_at, &m.name)) else { continue };
        let policy = Retention::merge(configured, newest.retention);
        report.policies.push((job.clone(), policy));
        let Some(policy) = policy else {
            for m in ms {
                kept.entry(m.name.clone()).or_default().insert(Keep::NoPolicy);
            }
            continue;
        };
        let list: Vec<(String, DateTime<Utc>)> = ms.iter().map(|m| (m.name.clone(), m.started_at)).collect();
        let mut chosen = retention::select(&policy, &list);
        let bases: Vec<&&Manifest> = ms.iter().filter(|m| m.kind == SnapshotKind::Basebackup && m.wal.is_some()).collect();
        if let Some(window) = policy.pitr_window {
            let cut = now - chrono::Duration::from_std(window).context("pitr_window")?;
            let base = bases
                .iter()
                .filter(|m| m.finished_at <= cut)
                .max_by_key(|m| m.finished_at)
                .or_else(|| bases.iter().min_by_key(|m| m.finished_at));
            if let Some(b) = base {
                chosen.entry(b.name.clone()).or_default().insert(Keep::PitrBase);
                wal_cut = older_cut(wal_cut, b);
            }
        } else {
            for b in bases.iter().filter(|b| chosen.contains_key(&b.name)) {
                wal_cut = older_cut(wal_cut, b);
            }
        }
        kept.extend(chosen);
    }
    Ok((kept, wal_cut))
}

/// Decides each snapshot's fate (into `report`); returns the manifests that
/// stay and the base backup the WAL is kept from.
#[allow(clippy::too_many_arguments)]
pub(super) fn choose<'a>(
    config: &ControllerConfig,
    t: &Tenant,
    manifests: &'a [Manifest],
    snaps: &BTreeMap<String, (u64, DateTime<Utc>)>,
    protected: &HashSet<String>,
    now: DateTime<Utc>,
    grace: chrono::Duration,
    report: &mut PruneReport,
) -> anyhow::Result<(Vec<&'a Manifest>, Option<&'a Manifest>)> {
    let (kept, wal_cut) = kept_by_policy(config, t, manifests, now, report)?;
    for m in manifests {
        // an expired manifest goes from every provider whose object lock
        // allows it; where a lock keeps it, it stays (with what it
        // references) until a later prune, on that provider only
        let keep = kept.get(&m.name).cloned().unwrap_or_default();
        if keep.is_empty() {
            // goes: the manifest first, then its index (a manifest never points at nothing)
            for key in [layout::manifest(&m.name), m.index.key.clone()] {
                if let Some((bytes, _)) = snaps.get(&key) {
                    report.deleted.push((key, *bytes));
                }
            }
        }
        report.snapshots.push(SnapshotFate { name: m.name.clone(), job: m.job.clone(), kind: m.kind, started_at: m.started_at, keep });
    }
    report.snapshots.sort_by(|a, b| (&a.job, a.started_at).cmp(&(&b.job, b.started_at)));
    let remaining: Vec<&Manifest> = manifests.iter().filter(|m| kept.contains_key(&m.name)).collect();
    // an index no manifest names (a run that failed before its commit), once old
    let named: HashSet<&str> = manifests.iter().map(|m| m.index.key.as_str()).collect();
    for (key, (bytes, at)) in snaps {
        if key.ends_with(".index") && !named.contains(key.as_str()) && !protected.contains(key) && *at + grace <= now {
            report.deleted.push((key.clone(), *bytes));
        }
    }
    Ok((remaining, wal_cut))
}
