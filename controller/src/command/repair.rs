//! `repair`: makes both providers whole again by copying ciphertext from
//! the provider that holds a good copy, with no key. Every copy on every
//! provider is read and checked against what signs it: a manifest or WAL
//! record by its signature (and tenant and name), a pack or WAL file by the
//! ciphertext hash its signed manifest or record gives, HEAD by its
//! signature. A copy that is missing, of the wrong length or fails its check
//! is replaced by one that passes; an object with no good copy anywhere is
//! reported, never "repaired" from a bad one. Writes keep the commit order:
//! packs and WAL files, then manifests and WAL records, then HEAD.
use std::collections::BTreeMap;
use std::process::ExitCode;

use bascule_core::head::Head;
use bascule_core::manifest::Manifest;
use bascule_core::object::ObjectRef;
use bascule_core::signed::Signed;
use bascule_core::wal::{record_name, WalRecord, WAL};
use bascule_core::{layout, Error};
use bytes::Bytes;
use futures::StreamExt;

use crate::command::TenantArg;
use crate::tenant::Tenant;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    tenant: TenantArg,
    /// Say what would be copied; write nothing.
    #[arg(long)]
    dry_run: bool,
}

pub async fn main(a: Args) -> anyhow::Result<ExitCode> {
    let (c, t) = a.tenant.open()?;
    let dry_run = a.dry_run;
    let r = run(&t, dry_run, c.config.restore.concurrency).await?;
    for (p, k, n, what) in &r.copied {
        println!("{} {p} {k} ({n} B): {what}", if dry_run { "WOULD COPY to" } else { "COPIED to" });
    }
    for (k, why) in &r.unrepairable {
        println!("UNREPAIRABLE {k}: no good copy ({why})");
    }
    for (p, why) in &r.failed {
        println!("FAILED {p}: {why}");
    }
    println!(
        "tenant {}: {} object(s) checked on {} providers; {} copied{}; {} unrepairable: {}",
        t.name,
        r.checked,
        t.replicated.replicas.len(),
        r.copied.len(),
        if dry_run { " (dry run: nothing written)" } else { "" },
        r.unrepairable.len(),
        if r.whole() { "both providers whole" } else { "NOT WHOLE" }
    );
    Ok(if r.whole() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// One copy of one object on one provider.
#[derive(Debug, Clone)]
enum Copy {
    Good(Bytes),
    Missing,
    Bad(String),
    /// The provider could not be listed or read: left alone.
    Unknown,
}

#[derive(Debug, Default)]
pub struct RepairReport {
    /// (provider, key, bytes, what was wrong).
    pub copied: Vec<(String, String, u64, String)>,
    /// (key, why): no provider holds a good copy.
    pub unrepairable: Vec<(String, String)>,
    /// (provider, why): could not be listed, read or written.
    pub failed: Vec<(String, String)>,
    pub checked: usize,
}

impl RepairReport {
    pub fn whole(&self) -> bool {
        self.unrepairable.is_empty() && self.failed.is_empty()
    }
}

/// What each provider lists (None: unreachable).
type Listings = Vec<Option<BTreeMap<String, u64>>>;

/// How long a copy must be: what a signed reference states, or at most
/// what such an object may have.
#[derive(Clone, Copy)]
enum Len {
    Exact(u64),
    AtMost(u64),
}

/// Reads `key` on every provider and checks each copy with `check`.
async fn copies(t: &Tenant, listings: &Listings, key: &str, len: Len, check: &(dyn Fn(&Bytes) -> Result<(), String> + Sync)) -> Vec<Copy> {
    let mut out = Vec::new();
    for (i, r) in t.replicated.replicas.iter().enumerate() {
        let Some(listing) = &listings[i] else {
            out.push(Copy::Unknown);
            continue;
        };
        let max = match len {
            Len::Exact(n) | Len::AtMost(n) => n,
        };
        match (listing.get(key), len) {
            (None, _) => out.push(Copy::Missing),
            (Some(have), Len::Exact(want)) if *have != want => out.push(Copy::Bad(format!("length {have}, expected {want}"))),
            _ => match r.get(key, max).await {
                Ok(Some(b)) => match check(&b) {
                    Ok(()) => out.push(Copy::Good(b)),
                    Err(e) => out.push(Copy::Bad(e)),
                },
                Ok(None) => out.push(Copy::Missing),
                Err(e @ Error::TooLarge { .. }) => out.push(Copy::Bad(e.to_string())),
                Err(_) => out.push(Copy::Unknown),
            },
        }
    }
    out
}

/// Copies a good copy of `key` over every missing or bad one.
async fn mend(t: &Tenant, key: &str, found: &[Copy], dry_run: bool, report: &mut RepairReport) {
    report.checked += 1;
    let Some(good) = found.iter().find_map(|c| if let Copy::Good(b) = c { Some(b.clone()) } else { None }) else {
        let why: Vec<String> = found
            .iter()
            .zip(&t.replicated.replicas)
            .map(|(c, r)| match c {
                Copy::Missing => format!("{}: missing", r.provider),
                Copy::Bad(e) => format!("{}: {e}", r.provider),
                Copy::Unknown => format!("{}: unreachable", r.provider),
                Copy::Good(_) => unreachable!(),
            })
            .collect();
        report.unrepairable.push((key.to_string(), why.join("; ")));
        return;
    };
    for (c, r) in found.iter().zip(&t.replicated.replicas) {
        let what = match c {
            Copy::Missing => "missing".to_string(),
            Copy::Bad(e) => format!("damaged: {e}"),
            Copy::Good(_) | Copy::Unknown => continue,
        };
        if !dry_run {
            if let Err(e) = r.put(key, good.clone()).await {
                report.failed.push((r.provider.clone(), format!("{key}: {e}")));
                continue;
            }
        }
        report.copied.push((r.provider.clone(), key.to_string(), good.len() as u64, what));
    }
}

pub async fn run(t: &Tenant, dry_run: bool, concurrency: usize) -> anyhow::Result<RepairReport> {
    let mut report = RepairReport::default();
    let mut listings: Listings = Vec::new();
    for r in &t.replicated.replicas {
        let l = async {
            let mut all = r.list(layout::SNAPSHOTS).await?;
            all.extend(r.list(layout::PACKS).await?);
            all.extend(r.list(WAL).await?);
            Ok::<_, Error>(all)
        };
        match l.await {
            Ok(l) => listings.push(Some(l)),
            Err(e) => {
                report.failed.push((r.provider.clone(), format!("cannot list: {e}")));
                listings.push(None);
            }
        }
    }
    let all_keys: Vec<String> = {
        let mut k: Vec<String> = listings.iter().flatten().flat_map(|l| l.keys().cloned()).collect();
        k.sort();
        k.dedup();
        k
    };

    // the signed objects first (read only): manifests and WAL records
    let mut manifests: Vec<(String, Vec<Copy>, Option<Manifest>)> = Vec::new();
    for key in all_keys.iter().filter(|k| layout::manifest_name(k).is_some()) {
        let name = layout::manifest_name(key).expect("filtered").to_string();
        let check = |b: &Bytes| t.open_manifest(&name, b).map(|_| ()).map_err(|e| e.to_string());
        let found = copies(t, &listings, key, Len::AtMost(Manifest::MAX_LEN), &check).await;
        let parsed = found.iter().find_map(|c| match c {
            Copy::Good(b) => t.open_manifest(&name, b).ok(),
            _ => None,
        });
        manifests.push((key.clone(), found, parsed));
    }
    let mut records: Vec<(String, Vec<Copy>, Option<WalRecord>)> = Vec::new();
    for key in &all_keys {
        let Some(w) = record_name(key) else { continue };
        let check = |b: &Bytes| t.open_wal_record(&w, b).map(|_| ()).map_err(|e| e.to_string());
        let found = copies(t, &listings, key, Len::AtMost(WalRecord::MAX_LEN), &check).await;
        let parsed = found.iter().find_map(|c| match c {
            Copy::Good(b) => t.open_wal_record(&w, b).ok(),
            _ => None,
        });
        records.push((key.clone(), found, parsed));
    }

    // the objects they vouch for: packs, indexes, WAL files
    let mut objects: BTreeMap<String, ObjectRef> = BTreeMap::new();
    for m in manifests.iter().filter_map(|(_, _, m)| m.as_ref()) {
        for o in m.all_objects() {
            objects.insert(o.key.clone(), o.clone());
        }
    }
    for r in records.iter().filter_map(|(_, _, r)| r.as_ref()) {
        objects.insert(r.object.key.clone(), r.object.clone());
    }
    let listings_ref = &listings;
    let checks: Vec<_> = objects
        .into_values()
        .map(|o| async move {
            let check = |b: &Bytes| o.check("", b).map_err(|e| e.to_string());
            let found = copies(t, listings_ref, &o.key, Len::Exact(o.len), &check).await;
            (o.key, found)
        })
        .collect();
    let results: Vec<(String, Vec<Copy>)> = futures::stream::iter(checks).buffer_unordered(concurrency).collect().await;
    for (key, found) in results {
        mend(t, &key, &found, dry_run, &mut report).await;
    }
    let signed_objects = manifests.iter().map(|(k, f, _)| (k, f)).chain(records.iter().map(|(k, f, _)| (k, f)));
    for (key, found) in signed_objects {
        mend(t, key, found, dry_run, &mut report).await;
    }

    // HEAD: a provider whose HEAD is missing or refused gets the newest valid one
    let check = |b: &Bytes| t.open_head(b).map(|_| ()).map_err(|e| e.to_string());
    let mut heads = Vec::new();
    for (i, r) in t.replicated.replicas.iter().enumerate() {
        heads.push(match (&listings[i], r.get(layout::HEAD, Head::MAX_LEN).await) {
            (None, _) | (_, Err(_)) => Copy::Unknown,
            (_, Ok(None)) => Copy::Missing,
            (_, Ok(Some(b))) => match check(&b) {
                Ok(()) => Copy::Good(b),
                Err(e) => Copy::Bad(e),
            },
        });
    }
    // the newest valid HEAD is the one copied; an older valid one is left alone
    // (each provider's HEAD names its own newest WAL file)
    let seq = |c: &Copy| match c {
        Copy::Good(b) => t.open_head(b).map(|h| h.sequence).unwrap_or(0),
        _ => 0,
    };
    match heads.iter().filter(|c| matches!(c, Copy::Good(_))).max_by_key(|c| seq(c)).cloned() {
        Some(best) => {
            let found: Vec<Copy> = heads.iter().map(|c| if matches!(c, Copy::Good(_)) { best.clone() } else { c.clone() }).collect();
            mend(t, layout::HEAD, &found, dry_run, &mut report).await;
        }
        None if heads.iter().any(|c| matches!(c, Copy::Bad(_))) => mend(t, layout::HEAD, &heads, dry_run, &mut report).await,
        None => {}
    }
    Ok(report)
}
