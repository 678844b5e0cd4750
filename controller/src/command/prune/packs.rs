//! Step 4 of a prune: packs. Those of condemned lists whose grace period is
//! over are deleted unless a manifest references them again; unreferenced
//! packs older than the grace period are condemned in a new list (see
//! `bascule_core::retention` for why this is safe against an export running
//! meanwhile). The condemned list goes out before anything is deleted.
use std::collections::{BTreeMap, HashSet};

use anyhow::{bail, Context};
use bascule_core::condemned::{self, Condemned, Trust};
use bascule_core::keys::{AgentKey, TrustedKey};
use bascule_core::layout;
use bascule_core::manifest::Manifest;
use bascule_core::object::ObjectRef;
use bascule_core::signed::Signed;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;

use super::{union, Listing, PruneReport};
use crate::config::ControllerConfig;
use crate::tenant::Tenant;

/// Decides what happens to every pack (into `report`); returns the
/// condemned lists read and those whose grace period is over.
#[allow(clippy::too_many_arguments)]
pub(super) async fn choose(
    t: &Tenant,
    signing: &AgentKey,
    remaining: &[&Manifest],
    protected: &HashSet<String>,
    pack_lists: &[Listing],
    now: DateTime<Utc>,
    grace: chrono::Duration,
    report: &mut PruneReport,
) -> anyhow::Result<(BTreeMap<String, Condemned>, Vec<String>)> {
    // what the kept manifests reference, and what an unverifiable one names while it is protected
    let referenced: HashSet<&str> =
        remaining.iter().flat_map(|m| m.objects.iter().map(|o| o.key.as_str())).chain(protected.iter().map(String::as_str)).collect();
    let packs = union(pack_lists);
    let trusted = [TrustedKey::from(signing.verify_key())];
    let read = condemned::read(&t.replicated.replicas, Trust::Signed { keys: &trusted, tenant: &t.name })
        .await
        .context("reading the condemned lists")?;
    // a list this controller did not sign is reported and ignored: a
    // provider could plant one naming the packs of a running export
    report.refused_lists = read.refused;
    let lists = read.lists;
    let mut pending: HashSet<&str> = HashSet::new();
    let mut lists_done = Vec::new();
    for (key, list) in &lists {
        let due = list.deletable_from() <= now;
        for p in &list.packs {
            pending.insert(p.key.as_str());
            if referenced.contains(p.key.as_str()) {
                report.referenced_again.push(p.key.clone());
            } else if !due {
                report.waiting.push((p.key.clone(), list.deletable_from()));
            } else if let Some((bytes, _)) = packs.get(&p.key) {
                report.deleted.push((p.key.clone(), *bytes));
            }
        }
        if due {
            lists_done.push(key.clone());
        }
    }
    for (key, (len, at)) in &packs {
        if !referenced.contains(key.as_str()) && !pending.contains(key.as_str()) && *at + grace <= now {
            if grace.is_zero() {
                // no grace period asked for: no condemnation either
                report.deleted.push((key.clone(), *len));
            } else {
                report.condemned.push(ObjectRef { key: key.clone(), len: *len, hash: String::new() });
            }
        }
    }
    Ok((lists, lists_done))
}

/// Writes the new condemned list (on both providers, or nothing is
/// deleted), deletes, then removes the lists that are done.
#[allow(clippy::too_many_arguments)]
pub(super) async fn apply(
    config: &ControllerConfig,
    signing: &AgentKey,
    t: &Tenant,
    lists: &BTreeMap<String, Condemned>,
    lists_done: Vec<String>,
    skip: &HashSet<(String, usize)>,
    now: DateTime<Utc>,
    report: &mut PruneReport,
) -> anyhow::Result<()> {
    let condemned_at = Utc::now().max(now);
    if !report.condemned.is_empty() {
        let list = Condemned {
            format: condemned::FORMAT,
            tenant: t.name.clone(),
            name: condemned::new_name(condemned_at),
            condemned_at,
            grace_seconds: config.prune.grace.as_secs(),
            packs: report.condemned.clone(),
        };
        report.condemned_until = Some(list.deletable_from());
        let key = condemned::key(&list.name);
        let writer = t.replicated.writer();
        let _ = writer.put(&key, Bytes::from(list.sign(signing))).await;
        if !writer.complete() {
            bail!("cannot write the condemned list {key} on every provider ({}); nothing deleted", writer.down_reasons());
        }
    }
    delete(t, config.prune.concurrency, &report.deleted, skip, &mut report.failed).await;
    // a list is done once each of its packs is gone (or kept); a failure or a lock keeps it for the next prune
    let failed_keys: HashSet<&str> = report.failed.iter().map(|f| f.1.as_str()).chain(skip.iter().map(|s| s.0.as_str())).collect();
    let done: Vec<(String, u64)> =
        lists_done.into_iter().filter(|k| lists[k].packs.iter().all(|p| !failed_keys.contains(p.key.as_str()))).map(|k| (k, 0)).collect();
    let mut failed = Vec::new();
    delete(t, config.prune.concurrency, &done, &HashSet::new(), &mut failed).await;
    report.failed.extend(failed);
    Ok(())
}

/// For each provider whose bucket locks objects for `periods[i]` after their
/// last modification `modified[i]`, when the lock ends, if it has not yet.
pub(super) fn lock_ends(
    periods: &[Option<chrono::Duration>],
    modified: &[Option<DateTime<Utc>>],
    now: DateTime<Utc>,
) -> Vec<(usize, DateTime<Utc>)> {
    periods
        .iter()
        .zip(modified)
        .enumerate()
        .filter_map(|(i, (period, at))| Some((i, at.as_ref()?.checked_add_signed(*period.as_ref()?)?)))
        .filter(|(_, until)| *until > now)
        .collect()
}

/// Deletes `keys` on every provider, in order of kind: manifests before
/// indexes and packs (a crash leaves no manifest pointing at nothing).
async fn delete(
    t: &Tenant,
    concurrency: usize,
    keys: &[(String, u64)],
    skip: &HashSet<(String, usize)>,
    failed: &mut Vec<(String, String, String)>,
) {
    let rank = |k: &str| if layout::manifest_name(k).is_some() { 0 } else { 1 };
    for pass in 0..2 {
        let mut work = Vec::new();
        for (k, _) in keys.iter().filter(|(k, _)| rank(k) == pass) {
            for (i, r) in t.replicated.replicas.iter().enumerate() {
                if !skip.contains(&(k.clone(), i)) {
                    work.push((k.clone(), r.clone()));
                }
            }
        }
        let results: Vec<(String, String, bascule_core::Result<()>)> = futures::stream::iter(work)
            .map(|(k, r)| async move {
                let res = r.delete(&k).await;
                (k, r.provider, res)
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
        for (k, p, r) in results {
            if let Err(e) = r {
                failed.push((p, k, e.to_string()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn object_lock_keeps_an_object_until_its_retention_ends() {
        let now = Utc.with_ymd_and_hms(2026, 11, 23, 0, 0, 0).unwrap();
        let days = |d| Some(chrono::Duration::days(d));
        let written = |d| Some(now - chrono::Duration::days(d));
        // provider 0 locks 30 days, provider 1 does not lock
        let periods = [days(30), None];
        assert_eq!(lock_ends(&periods, &[written(10), written(10)], now), vec![(0, now + chrono::Duration::days(20))]);
        assert!(lock_ends(&periods, &[written(31), written(31)], now).is_empty(), "the lock has ended");
        assert!(lock_ends(&periods, &[None, written(1)], now).is_empty(), "not on the locking provider");
        assert_eq!(lock_ends(&[days(1), days(365)], &[written(2), written(2)], now).len(), 1);
    }
}
