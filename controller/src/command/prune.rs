//! `prune`: applies a tenant's retention on both providers, with no key.
//!
//! 1. Every manifest any provider lists is verified (one that verifies
//!    nowhere stops the prune: what it references is unknown).
//! 2. Per job, the retention (the controller's merged with the one the agent
//!    signed into its newest manifest) decides which snapshots stay; the
//!    others lose their manifest, then their sealed index.
//! 3. WAL older than the base backup the PITR window starts from (or the
//!    oldest kept base backup) goes, except the range each older kept base
//!    backup needs to reach consistency.
//! 4. Packs: those of condemned lists whose grace period is over are deleted
//!    unless a manifest references them again; unreferenced packs older than
//!    the grace period are condemned in a new list (see
//!    `bascule_core::retention` for why this is safe against an export
//!    running meanwhile).
//!
//! Both providers must answer: a prune that saw one side only could condemn
//! what the other side's manifests need.
use std::collections::{BTreeMap, BTreeSet, HashSet};

use anyhow::{bail, Context};
use bascule_core::manifest::{Manifest, ObjectRef, SnapshotKind};
use bascule_core::retention::{self, Condemned, Keep, Retention};
use bascule_core::wal::{WalFileKind, WalName, WAL};
use bascule_core::{layout, wal::Lsn};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;

use crate::config::ControllerConfig;
use crate::tenant::Tenant;

type Listing = BTreeMap<String, (u64, DateTime<Utc>)>;

/// One snapshot and what the prune decided for it.
#[derive(Debug)]
pub struct SnapshotFate {
    pub name: String,
    pub job: String,
    pub kind: SnapshotKind,
    pub started_at: DateTime<Utc>,
    /// Why it stays; empty: it goes.
    pub keep: BTreeSet<Keep>,
}

#[derive(Debug, Default)]
pub struct PruneReport {
    pub dry_run: bool,
    /// (job, policy in force; None: no policy, everything kept).
    pub policies: Vec<(String, Option<Retention>)>,
    pub snapshots: Vec<SnapshotFate>,
    /// Objects deleted (or that a dry run would delete): (key, bytes on each provider summed).
    pub deleted: Vec<(String, u64)>,
    /// Packs condemned by this run, deletable from the given time.
    pub condemned: Vec<ObjectRef>,
    pub condemned_until: Option<DateTime<Utc>>,
    /// Condemned packs still in their grace period: (key, deletable from).
    pub waiting: Vec<(String, DateTime<Utc>)>,
    /// Condemned packs a newer manifest references again (kept).
    pub referenced_again: Vec<String>,
    /// The first WAL position kept, when WAL was pruned.
    pub wal_from: Option<String>,
    /// (provider, key, why): a deletion that failed; retried by the next prune.
    pub failed: Vec<(String, String, String)>,
    /// (provider, key, locked until): objects S3 Object Lock keeps for now;
    /// deleted by a later prune.
    pub locked: Vec<(String, String, DateTime<Utc>)>,
    /// (provider, what its bucket protects), when it has object lock.
    pub protections: Vec<(String, String)>,
}

impl PruneReport {
    /// Bytes deleted (or that a dry run would delete), leaving out what
    /// object lock keeps for now.
    pub fn freed(&self) -> u64 {
        let locked: HashSet<&str> = self.locked.iter().map(|l| l.1.as_str()).collect();
        self.deleted.iter().filter(|d| !locked.contains(d.0.as_str())).map(|d| d.1).sum()
    }
}

/// Lists `prefix` on every provider; every provider must answer.
async fn list_all(t: &Tenant, prefix: &str) -> anyhow::Result<Vec<Listing>> {
    let mut out = Vec::new();
    for r in &t.replicated.replicas {
        out.push(r.list_meta(prefix).await.with_context(|| format!("prune needs both providers: listing {prefix} on {}", r.provider))?);
    }
    Ok(out)
}

/// Every key any listing holds, with the bytes summed over the providers and
/// the newest modification time.
fn union(listings: &[Listing]) -> BTreeMap<String, (u64, DateTime<Utc>)> {
    let mut all: BTreeMap<String, (u64, DateTime<Utc>)> = BTreeMap::new();
    for l in listings {
        for (k, (size, at)) in l {
            let e = all.entry(k.clone()).or_insert((0, *at));
            e.0 += size;
            e.1 = e.1.max(*at);
        }
    }
    all
}

/// The WAL segment that holds `lsn`.
fn segment_of(lsn: Lsn, segment_size: u64) -> u64 {
    lsn.0 / segment_size.max(1)
}

/// Which WAL files stay: those at or after `cut` (timeline, segment number)
/// or on a later timeline, history files, and the `keep_ranges`.
fn wal_keeps(w: &WalName, segment_size: u64, cut: (u32, u64), keep_ranges: &[(u32, u64, u64)]) -> bool {
    if w.kind == WalFileKind::History || w.timeline > cut.0 {
        return true;
    }
    let pos = w.segment_number(segment_size);
    pos >= cut.1 || keep_ranges.iter().any(|(tl, from, to)| w.timeline == *tl && (*from..=*to).contains(&pos))
}

pub async fn run(config: &ControllerConfig, t: &Tenant, dry_run: bool, now: DateTime<Utc>) -> anyhow::Result<PruneReport> {
    let grace = chrono::Duration::from_std(config.prune.grace).context("prune.grace")?;
    let mut report = PruneReport { dry_run, ..Default::default() };

    // What object lock keeps, per provider: (key → until)
    let mut lock_periods = Vec::new();
    for r in &t.replicated.replicas {
        let period = match r.protection().await {
            Ok(p) => {
                if p.lock_period().is_some() {
                    report.protections.push((r.provider.clone(), p.to_string()));
                }
                p.lock_period()
            }
            Err(e) => {
                tracing::warn!(provider = %r.provider, error = %e, "Cannot read the bucket's object lock settings");
                None
            }
        };
        lock_periods.push(period.map(|p| chrono::Duration::from_std(p).unwrap_or(chrono::Duration::MAX)));
    }
    // 1. Every manifest, verified.
    let snap_lists = list_all(t, layout::SNAPSHOTS).await?;
    let snaps = union(&snap_lists);
    let mut manifests: Vec<Manifest> = Vec::new();
    for key in snaps.keys() {
        if let Some(name) = layout::manifest_name(key) {
            let (m, _) = t.manifest(name).await.with_context(|| {
                format!("manifest {name} verifies on no provider: nothing deleted (inspect it with `verify`, mend it with `repair`)")
            })?;
            manifests.push(m);
        }
    }

    // the rest of what the providers hold (the WAL only when a base backup may cut it)
    let pack_lists = list_all(t, layout::PACKS).await?;
    let wal_lists =
        if manifests.iter().any(|m| m.wal.is_some()) { list_all(t, WAL).await? } else { vec![Listing::new(); t.replicated.replicas.len()] };
    let locked_until = |key: &str| -> Vec<(usize, DateTime<Utc>)> {
        let modified: Vec<Option<DateTime<Utc>>> = (0..lock_periods.len())
            .map(|i| snap_lists[i].get(key).or_else(|| pack_lists[i].get(key)).or_else(|| wal_lists[i].get(key)).map(|(_, at)| *at))
            .collect();
        lock_ends(&lock_periods, &modified, now)
    };

    // 2. Retention per job.
    let mut jobs: BTreeMap<String, Vec<&Manifest>> = BTreeMap::new();
    for m in &manifests {
        jobs.entry(m.job.clone()).or_default().push(m);
    }
    let configured = config.retention_of(&t.name);
    let mut kept: BTreeMap<String, BTreeSet<Keep>> = BTreeMap::new();
    // the base backup from which the WAL is kept whole
    let mut wal_cut: Option<&Manifest> = None;
    for (job, ms) in &jobs {
        let newest = ms.iter().max_by_key(|m| (m.started_at, &m.name)).expect("a job has a manifest");
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
    for m in &manifests {
        let mut keep = kept.get(&m.name).cloned().unwrap_or_default();
        if keep.is_empty() && !locked_until(&layout::manifest(&m.name)).is_empty() {
            // an expired manifest object lock keeps: what it references stays too
            keep.insert(Keep::Locked);
            kept.insert(m.name.clone(), keep.clone());
        }
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
    for (key, (bytes, at)) in &snaps {
        if key.ends_with(".index") && !named.contains(key.as_str()) && *at + grace <= now {
            report.deleted.push((key.clone(), *bytes));
        }
    }

    // 3. WAL before the cut.
    if let Some(base) = wal_cut {
        let range = base.wal.as_ref().expect("a base backup with its WAL range");
        let wal = union(&wal_lists);
        let first_segment = wal.keys().filter_map(|k| bascule_core::wal::record_name(k)).find(|w| w.kind == WalFileKind::Segment);
        if let Some(first) = first_segment {
            let (record, _) = t.wal_record(&first, 0).await.with_context(|| format!("the record of WAL segment {}", first.name))?;
            let segment_size = record.size;
            let cut = (range.timeline, segment_of(range.start, segment_size));
            // older kept base backups keep the WAL that makes them consistent
            let ranges: Vec<(u32, u64, u64)> = remaining
                .iter()
                .filter_map(|m| m.wal.as_ref())
                .map(|w| (w.timeline, segment_of(w.start, segment_size), segment_of(w.stop, segment_size)))
                .collect();
            report.wal_from = Some(format!("timeline {} from LSN {} (base backup {})", range.timeline, range.start, base.name));
            for (key, (bytes, _)) in &wal {
                let name = key.strip_prefix(WAL).and_then(|r| r.split_once('/')).map(|(_, n)| n.trim_end_matches(".rec"));
                let Some(w) = name.and_then(WalName::parse) else { continue };
                if !wal_keeps(&w, segment_size, cut, &ranges) {
                    report.deleted.push((key.clone(), *bytes));
                }
            }
        }
    }

    // 4. Packs: delete those condemned long enough, condemn the unreferenced.
    let referenced: HashSet<&str> = remaining.iter().flat_map(|m| m.objects.iter().map(|o| o.key.as_str())).collect();
    let packs = union(&pack_lists);
    let lists = retention::read_condemned(&t.replicated.replicas).await.context("reading the condemned lists")?;
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
    let condemned_at = Utc::now().max(now);
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

    // object lock: what it keeps is left for a later prune
    let mut skip: HashSet<(String, usize)> = HashSet::new();
    for (key, _) in &report.deleted {
        for (i, until) in locked_until(key) {
            skip.insert((key.clone(), i));
            report.locked.push((t.replicated.replicas[i].provider.clone(), key.clone(), until));
        }
    }
    if dry_run {
        return Ok(report);
    }
    // the condemned list goes out before anything is deleted
    if !report.condemned.is_empty() {
        let list = Condemned {
            format: retention::FORMAT,
            condemned_at,
            grace_seconds: config.prune.grace.as_secs(),
            packs: report.condemned.clone(),
        };
        report.condemned_until = Some(list.deletable_from());
        let key = retention::condemned_key(condemned_at);
        let bytes = Bytes::from(serde_json::to_vec(&list)?);
        for (p, r) in t.replicated.put(&key, bytes, &vec![true; t.replicated.replicas.len()]).await {
            if let Err(e) = r {
                bail!("cannot write the condemned list {key} on {p}: {e}; nothing deleted");
            }
        }
    }
    delete(t, config.prune.concurrency, &report.deleted, &skip, &mut report.failed).await;
    // a list is done once each of its packs is gone (or kept); a failure or a lock keeps it for the next prune
    let failed_keys: HashSet<&str> = report.failed.iter().map(|f| f.1.as_str()).chain(skip.iter().map(|s| s.0.as_str())).collect();
    let done: Vec<(String, u64)> =
        lists_done.into_iter().filter(|k| lists[k].packs.iter().all(|p| !failed_keys.contains(p.key.as_str()))).map(|k| (k, 0)).collect();
    let mut failed = Vec::new();
    delete(t, config.prune.concurrency, &done, &HashSet::new(), &mut failed).await;
    report.failed.extend(failed);
    Ok(report)
}

/// For each provider whose bucket locks objects for `periods[i]` after their
/// last modification `modified[i]`, when the lock ends, if it has not yet.
fn lock_ends(periods: &[Option<chrono::Duration>], modified: &[Option<DateTime<Utc>>], now: DateTime<Utc>) -> Vec<(usize, DateTime<Utc>)> {
    periods
        .iter()
        .zip(modified)
        .enumerate()
        .filter_map(|(i, (period, at))| Some((i, at.as_ref()?.checked_add_signed(*period.as_ref()?)?)))
        .filter(|(_, until)| *until > now)
        .collect()
}

/// Of the current cut and base backup `b`, the one that starts earlier.
fn older_cut<'a>(cut: Option<&'a Manifest>, b: &'a Manifest) -> Option<&'a Manifest> {
    let start = |m: &Manifest| m.wal.as_ref().map(|w| (w.timeline, w.start));
    match cut {
        Some(c) if start(c) <= start(b) => Some(c),
        _ => Some(b),
    }
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

/// The report, for a terminal or a log.
pub fn print(t: &Tenant, r: &PruneReport) {
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1 << 20) as f64);
    if r.dry_run {
        println!("tenant {}: dry run, nothing deleted", t.name);
    }
    for (job, p) in &r.policies {
        match p {
            Some(p) => println!("job {job}: keeping {p}"),
            None => println!("job {job}: no retention configured, every snapshot kept"),
        }
    }
    for s in &r.snapshots {
        let why: Vec<String> = s.keep.iter().map(|k| k.to_string()).collect();
        let verdict = if why.is_empty() { "delete".to_string() } else { format!("keep ({})", why.join(", ")) };
        println!("  {:<8} {:<12} {:<34} {verdict}", s.job, s.kind.to_string(), s.name);
    }
    let goes = r.snapshots.iter().filter(|s| s.keep.is_empty()).count();
    let kind = |pred: &dyn Fn(&str) -> bool| {
        let v: Vec<&(String, u64)> = r.deleted.iter().filter(|(k, _)| pred(k)).collect();
        (v.len(), v.iter().map(|d| d.1).sum::<u64>())
    };
    let (n_snap, b_snap) = kind(&|k| k.starts_with(layout::SNAPSHOTS));
    let (n_pack, b_pack) = kind(&|k| k.starts_with(layout::PACKS));
    let (n_wal, b_wal) = kind(&|k| k.starts_with(WAL));
    let verb = if r.dry_run { "would delete" } else { "deleted" };
    println!("snapshots: {} kept, {goes} {verb} ({n_snap} objects, {})", r.snapshots.len() - goes, mib(b_snap));
    println!("packs: {n_pack} {verb} ({}) after their grace period", mib(b_pack));
    if !r.condemned.is_empty() {
        let bytes: u64 = r.condemned.iter().map(|c| c.len).sum();
        let when = r.condemned_until.map(|u| format!(", deletable from {}", u.to_rfc3339())).unwrap_or_default();
        let verb = if r.dry_run { "would be condemned" } else { "condemned" };
        println!("packs: {} no snapshot references {verb} ({} on the providers{when})", r.condemned.len(), mib(bytes));
    }
    if !r.waiting.is_empty() {
        let first = r.waiting.iter().map(|w| w.1).min().expect("one");
        println!("packs: {} condemned earlier, in their grace period (the first deletable from {})", r.waiting.len(), first.to_rfc3339());
    }
    if !r.referenced_again.is_empty() {
        println!("packs: {} condemned earlier are referenced again by a newer snapshot: kept", r.referenced_again.len());
    }
    match &r.wal_from {
        Some(from) => println!("wal: {n_wal} files {verb} ({}); kept {from} onwards", mib(b_wal)),
        None => println!("wal: nothing to prune (no base backup defines where PITR starts)"),
    }
    for (p, what) in &r.protections {
        println!("bucket of {p}: {what}");
    }
    if !r.locked.is_empty() {
        let last = r.locked.iter().map(|l| l.2).max().expect("one");
        println!(
            "object lock: {} object(s) cannot be deleted yet (the last until {}); a later prune deletes them",
            r.locked.len(),
            last.to_rfc3339()
        );
        for (p, k, until) in r.locked.iter().take(20) {
            println!("  LOCKED on {p}: {k} until {}", until.to_rfc3339());
        }
    }
    println!("freed: {} ({} bytes, both providers)", mib(r.freed()), r.freed());
    for (p, k, why) in &r.failed {
        println!("FAILED on {p}: {k}: {why}");
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

    #[test]
    fn wal_keeps_history_later_timelines_the_cut_and_the_ranges() {
        let seg = 16 << 20;
        let w = |n: &str| WalName::parse(n).unwrap();
        let cut = (2, 0x10);
        let ranges = [(1u32, 0x4u64, 0x5u64)];
        assert!(wal_keeps(&w("00000001.history"), seg, cut, &ranges));
        assert!(wal_keeps(&w("000000030000000000000001"), seg, cut, &ranges), "a later timeline");
        assert!(wal_keeps(&w("000000020000000000000010"), seg, cut, &ranges), "the cut's own segment");
        assert!(!wal_keeps(&w("00000002000000000000000F"), seg, cut, &ranges), "before the cut");
        assert!(wal_keeps(&w("000000010000000000000005"), seg, cut, &ranges), "an older kept base backup's range");
        assert!(!wal_keeps(&w("000000010000000000000006"), seg, cut, &ranges));
        assert!(!wal_keeps(&w("000000010000000000000003.00000028.backup"), seg, cut, &ranges));
    }
}
