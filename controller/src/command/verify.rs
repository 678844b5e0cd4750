//! `verify`: without any key, proves each snapshot is signed, complete and
//! present on both providers; with `read_data`, re-hashes every ciphertext.
use std::process::ExitCode;

use bascule_core::object::ObjectRef;
use bascule_core::signed::Signed;
use bascule_core::{layout, manifest::Manifest};
use futures::StreamExt;

pub use super::check::{Problem, ReadData};
use crate::command::TenantArg;
use crate::tenant::{HeadState, Tenant};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    tenant: TenantArg,
    /// Also download every object and check its ciphertext hash.
    #[arg(long)]
    read_data: bool,
    /// Read back only slice N of M (objects chosen by the hash of their
    /// key), e.g. `3/100`: what the scheduled verify of `serve` does daily.
    #[arg(long, value_name = "N/M", conflicts_with = "read_data")]
    sample: Option<String>,
}

pub async fn main(a: Args) -> anyhow::Result<ExitCode> {
    let read_data = match (a.read_data, a.sample) {
        (true, _) => ReadData::All,
        (false, Some(s)) => ReadData::parse_sample(&s)?,
        (false, None) => ReadData::None,
    };
    let (c, t) = a.tenant.open()?;
    let r = run(&t, read_data, c.config.restore.concurrency).await?;
    for replica in &t.replicated.replicas {
        match replica.protection().await {
            Ok(p) => println!("bucket of {}: {p}", replica.provider),
            Err(e) => println!("bucket of {}: versioning and object lock unknown ({e})", replica.provider),
        }
    }
    for p in &r.problems {
        println!("PROBLEM {p}");
    }
    println!(
        "tenant {}: {} snapshot(s), {} object(s), {} WAL file(s) checked on {} providers{}: {}",
        t.name,
        r.snapshots,
        r.objects_checked,
        r.wal_files,
        t.replicated.replicas.len(),
        if read_data.any() { format!(", {} bytes read and hashed", r.bytes_read) } else { String::new() },
        if r.problems.is_empty() { "OK".to_string() } else { format!("{} problem(s)", r.problems.len()) }
    );
    Ok(if r.problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

#[derive(Debug, Default)]
pub struct VerifyReport {
    pub snapshots: usize,
    /// WAL files (each checked on every provider).
    pub wal_files: usize,
    pub objects_checked: usize,
    pub bytes_read: u64,
    pub problems: Vec<Problem>,
}

pub async fn run(tenant: &Tenant, read_data: ReadData, concurrency: usize) -> anyhow::Result<VerifyReport> {
    let mut report = VerifyReport::default();
    let mut problems = Vec::new();
    let heads = tenant.heads().await;
    let mut valid = Vec::new();
    for (p, h) in &heads {
        match h {
            HeadState::Valid(h) => valid.push((p.clone(), h.clone())),
            HeadState::Absent => report_push(&mut problems, p, layout::HEAD, "missing".into()),
            HeadState::Refused(e) => report_push(&mut problems, p, layout::HEAD, format!("refused: {e}")),
        }
    }
    // WAL shipping moves each provider's HEAD on its own, so sequences
    // differ; a provider is behind when its HEAD names an older snapshot
    if let Some(newest) = valid.iter().map(|(_, h)| h).max_by_key(|h| h.sequence) {
        for (p, h) in &valid {
            if h.latest_snapshot < newest.latest_snapshot {
                report_push(
                    &mut problems,
                    p,
                    layout::HEAD,
                    format!(
                        "names snapshot {} but the newest is {}: the provider missed commits; run `bascule-agent sync`",
                        h.latest_snapshot.as_deref().unwrap_or("none"),
                        newest.latest_snapshot.as_deref().unwrap_or("none")
                    ),
                );
            }
        }
    }

    let listings = tenant.listings().await;
    for (p, l) in &listings {
        if let Err(e) = l {
            report_push(&mut problems, p, "(listing)", format!("unreachable: {e}"));
        }
    }
    let names = Tenant::snapshot_names(&listings);
    report.snapshots = names.len();
    let mut to_read: Vec<(usize, ObjectRef)> = Vec::new();
    for name in &names {
        let mkey = layout::manifest(name);
        // every copy of the manifest must carry a valid signature
        let mut good: Option<Manifest> = None;
        for (i, r) in tenant.replicated.replicas.iter().enumerate() {
            let Ok(listing) = &listings[i].1 else { continue };
            if !listing.contains_key(&mkey) {
                report_push(&mut problems, &r.provider, &mkey, "manifest missing".into());
                continue;
            }
            match r.get(&mkey, Manifest::MAX_LEN).await {
                Ok(Some(b)) => match tenant.open_manifest(name, &b) {
                    Ok(m) => good = good.or(Some(m)),
                    Err(e) => report_push(&mut problems, &r.provider, &mkey, format!("refused: {e}")),
                },
                Ok(None) => report_push(&mut problems, &r.provider, &mkey, "manifest missing".into()),
                Err(e) => report_push(&mut problems, &r.provider, &mkey, e.to_string()),
            }
        }
        let Some(m) = good else { continue };
        for o in m.all_objects() {
            for (i, r) in tenant.replicated.replicas.iter().enumerate() {
                let Ok(listing) = &listings[i].1 else { continue };
                match listing.get(&o.key) {
                    None => report_push(&mut problems, &r.provider, &o.key, format!("missing (needed by snapshot {name})")),
                    Some(len) if *len != o.len => {
                        report_push(&mut problems, &r.provider, &o.key, format!("length {len}, manifest says {}", o.len))
                    }
                    Some(_) => {
                        if read_data.reads(&o.key) {
                            to_read.push((i, o.clone()));
                        }
                    }
                }
            }
            report.objects_checked += 1;
        }
    }
    if read_data.any() {
        // Objects shared by several snapshots are read once per provider.
        to_read.sort_by(|a, b| (a.0, &a.1.key).cmp(&(b.0, &b.1.key)));
        to_read.dedup_by(|a, b| a.0 == b.0 && a.1.key == b.1.key);
        // futures made before the stream, so that the whole verify is Send (for `serve`)
        let reads: Vec<_> = to_read
            .into_iter()
            .map(|(i, o)| {
                let r = &tenant.replicated.replicas[i];
                async move {
                    let res = match r.get_ref(&o).await {
                        Ok(Some(b)) => o.check(&r.provider, &b).map(|_| b.len() as u64).map_err(|e| e.to_string()),
                        Ok(None) => Err("missing".into()),
                        Err(e) => Err(e.to_string()),
                    };
                    (r.provider.clone(), o.key, res)
                }
            })
            .collect();
        let results: Vec<_> = futures::stream::iter(reads).buffer_unordered(concurrency).collect().await;
        for (p, k, res) in results {
            match res {
                Ok(n) => report.bytes_read += n,
                Err(e) => report_push(&mut problems, &p, &k, e),
            }
        }
    }
    let wal = super::wal::scan(tenant, read_data, concurrency).await;
    report.wal_files = wal.files;
    report.bytes_read += wal.bytes_read;
    problems.extend(wal.problems);
    problems.sort();
    report.problems = problems;
    Ok(report)
}

fn report_push(problems: &mut Vec<Problem>, provider: &str, key: &str, what: String) {
    super::check::push(problems, provider, key, what);
}
