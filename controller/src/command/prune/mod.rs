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
mod keep;
mod packs;
mod print;
mod unverified;
mod wal;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::process::ExitCode;

use anyhow::Context;
use bascule_core::layout;
use bascule_core::manifest::SnapshotKind;
use bascule_core::object::ObjectRef;
use bascule_core::retention::{Keep, Retention};
use chrono::{DateTime, Utc};

pub use print::print;
pub use unverified::Unverified;

use crate::command::TenantArg;
use crate::context::Controller;
use crate::tenant::Tenant;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    tenant: TenantArg,
    /// Print what would go and the bytes freed; delete nothing.
    #[arg(long)]
    dry_run: bool,
}

pub async fn main(a: Args) -> anyhow::Result<ExitCode> {
    let (c, t) = a.tenant.open()?;
    let r = run(&c, &t, a.dry_run, Utc::now()).await?;
    print(&t, &r);
    Ok(if r.failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

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
    /// (provider, key, why): condemned lists ignored, for they do not carry
    /// this controller's signature.
    pub refused_lists: Vec<(String, String, String)>,
    /// Manifests that verify on no provider, and what is kept for them.
    pub unverified: Vec<Unverified>,
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

/// What the providers hold, listed once: snapshots, packs, WAL, and how long
/// each provider's object lock keeps what it holds.
struct Held {
    snap_lists: Vec<Listing>,
    pack_lists: Vec<Listing>,
    wal_lists: Vec<Listing>,
    lock_periods: Vec<Option<chrono::Duration>>,
}

impl Held {
    /// The providers whose object lock still keeps `key`, and until when.
    fn locked_until(&self, key: &str, now: DateTime<Utc>) -> Vec<(usize, DateTime<Utc>)> {
        let modified: Vec<Option<DateTime<Utc>>> = (0..self.lock_periods.len())
            .map(|i| {
                let found = self.snap_lists[i].get(key).or_else(|| self.pack_lists[i].get(key)).or_else(|| self.wal_lists[i].get(key));
                found.map(|(_, at)| *at)
            })
            .collect();
        packs::lock_ends(&self.lock_periods, &modified, now)
    }
}

/// How long each provider's object lock keeps a new object (`None`: no lock).
async fn lock_periods(t: &Tenant, report: &mut PruneReport) -> Vec<Option<chrono::Duration>> {
    let mut out = Vec::new();
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
        out.push(period.map(|p| chrono::Duration::from_std(p).unwrap_or(chrono::Duration::MAX)));
    }
    out
}

/// Object lock: what a provider's lock keeps is left on that provider for a
/// later prune (and deleted from the other), and so is what a manifest it
/// keeps references. A provider that claims a lock it does not have only
/// keeps objects on its own side: it can never keep them on the other.
/// Returns (key, provider index) → until when.
fn locked(
    held: &Held,
    deleted: &[(String, u64)],
    references: impl Fn(&str) -> Vec<String>,
    now: DateTime<Utc>,
) -> BTreeMap<(String, usize), DateTime<Utc>> {
    let mut skip: BTreeMap<(String, usize), DateTime<Utc>> = BTreeMap::new();
    for (key, _) in deleted {
        for (i, until) in held.locked_until(key, now) {
            for k in std::iter::once(key.clone()).chain(layout::manifest_name(key).map(&references).unwrap_or_default()) {
                let e = skip.entry((k, i)).or_insert(until);
                *e = (*e).max(until);
            }
        }
    }
    let deleted: HashSet<&str> = deleted.iter().map(|d| d.0.as_str()).collect();
    skip.retain(|(k, _), _| deleted.contains(k.as_str()));
    skip
}

pub async fn run(c: &Controller, t: &Tenant, dry_run: bool, now: DateTime<Utc>) -> anyhow::Result<PruneReport> {
    let config = &c.config;
    // condemned lists are signed with the controller's key
    let signing = c.report_key()?;
    let grace = chrono::Duration::from_std(config.prune.grace).context("prune.grace")?;
    let mut report = PruneReport { dry_run, ..Default::default() };
    let lock_periods = lock_periods(t, &mut report).await;
    // 1. Every manifest, verified; what one that verifies nowhere names is kept
    let snap_lists = list_all(t, layout::SNAPSHOTS).await?;
    let snaps = union(&snap_lists);
    let quarantine = chrono::Duration::from_std(config.prune.quarantine).context("prune.quarantine")?;
    let names = snaps.keys().filter_map(|k| layout::manifest_name(k).map(str::to_string));
    let (manifests, unverified) = unverified::sort(t, &config.state_dir, quarantine, names, now).await?;
    let protected: HashSet<String> = unverified.iter().filter(|u| u.protects(now)).flat_map(|u| u.names.iter().cloned()).collect();
    report.unverified = unverified;
    // the rest of what the providers hold (the WAL only when a base backup may cut it)
    let pack_lists = list_all(t, layout::PACKS).await?;
    let wal_lists = if manifests.iter().any(|m| m.wal.is_some()) {
        list_all(t, bascule_core::wal::WAL).await?
    } else {
        vec![Listing::new(); t.replicated.replicas.len()]
    };
    let held = Held { snap_lists, pack_lists, wal_lists, lock_periods };
    // 2. Retention per job.
    let (remaining, wal_cut) = keep::choose(config, t, &manifests, &snaps, &protected, now, grace, &mut report)?;
    // 3. WAL before the cut.
    if let Some(base) = wal_cut {
        wal::choose(t, base, &remaining, &held.wal_lists, &mut report).await?;
    }
    // 4. Packs: delete those condemned long enough, condemn the unreferenced.
    let (lists, lists_done) = packs::choose(t, &signing, &remaining, &protected, &held.pack_lists, now, grace, &mut report).await?;
    let references = |name: &str| -> Vec<String> {
        let m = manifests.iter().find(|m| m.name == name);
        m.map(|m| m.objects.iter().chain(std::iter::once(&m.index)).map(|o| o.key.clone()).collect()).unwrap_or_default()
    };
    let skip = locked(&held, &report.deleted, references, now);
    for ((key, i), until) in &skip {
        report.locked.push((t.replicated.replicas[*i].provider.clone(), key.clone(), *until));
    }
    let skip: HashSet<(String, usize)> = skip.into_keys().collect();
    if dry_run {
        return Ok(report);
    }
    packs::apply(config, &signing, t, &lists, lists_done, &skip, now, &mut report).await?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(keys: &[&str], at: DateTime<Utc>) -> Listing {
        keys.iter().map(|k| (k.to_string(), (1, at))).collect()
    }

    #[test]
    fn a_lock_one_provider_claims_keeps_objects_on_that_provider_only() {
        let at: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        let now = at + chrono::Duration::days(400);
        let m = "snapshots/20260101T000000Z-aa.manifest";
        let all = [m, "snapshots/20260101T000000Z-aa.index", "packs/ab/ab01"];
        let held = Held {
            snap_lists: vec![listing(&all[..2], at), listing(&all[..2], at)],
            pack_lists: vec![listing(&all[2..], at), listing(&all[2..], at)],
            wal_lists: vec![Listing::new(), Listing::new()],
            // provider 0 says a 100-year lock, provider 1 none
            lock_periods: vec![Some(chrono::Duration::days(36_500)), None],
        };
        // the manifest expired: it goes, and (at a later prune) so do its packs
        let deleted: Vec<(String, u64)> = all.iter().map(|k| (k.to_string(), 1)).collect();
        let references = |name: &str| {
            assert_eq!(name, "20260101T000000Z-aa");
            vec![all[1].to_string(), all[2].to_string()]
        };
        let skip = locked(&held, &deleted, references, now);
        let until = at + chrono::Duration::days(36_500);
        let expected: BTreeMap<(String, usize), DateTime<Utc>> = all.iter().map(|k| ((k.to_string(), 0), until)).collect();
        assert_eq!(skip, expected, "kept on provider 0 only; provider 1 deletes everything");
        // only what is being deleted is skipped
        let skip = locked(&held, &deleted[2..], |_| Vec::new(), now);
        assert_eq!(skip.keys().collect::<Vec<_>>(), [&(all[2].to_string(), 0)]);
        // a lock that has ended keeps nothing
        assert!(locked(&held, &deleted, |_| Vec::new(), until + chrono::Duration::seconds(1)).is_empty());
    }
}
