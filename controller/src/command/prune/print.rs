//! What a prune did (or would do), for a terminal or a log.
use bascule_core::layout;
use bascule_core::wal::WAL;

use super::PruneReport;
use crate::tenant::Tenant;

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
    for u in &r.unverified {
        let kept = match u.until {
            None => "kept as long as it is there (signed by the tenant's key, for this tenant and name)".to_string(),
            Some(t) => format!("kept until {} (not signed by the tenant's key for this tenant and name)", t.to_rfc3339()),
        };
        println!("UNVERIFIED {}: {}; the {} object(s) it names {kept}", layout::manifest(&u.name), u.why, u.names.len());
    }
    for (p, k, why) in &r.refused_lists {
        println!("IGNORED condemned list {k} on {p}: {why}");
    }
    for (p, k, why) in &r.failed {
        println!("FAILED on {p}: {k}: {why}");
    }
}
