//! `restore`: with the identity the customer handed over (kept in memory
//! only), fetch a snapshot from whichever provider holds good copies, check
//! every byte, feed `pg_restore`, then compare row counts with the export's;
//! or write the verified stream to a file (`--output`).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bascule_core::keys::Identities;
use bascule_core::manifest::{Manifest, SnapshotKind};
use bascule_core::postgres::parallel::{self, Outcome, Parallel};
use bascule_core::postgres::{compare_row_counts, missing_roles, missing_roles_advice, pg_restore, Keep, PgRestore};
use bascule_core::progress::Progress;
use bascule_core::restore::{open_index, stream_chunks, RestoreError};
use tokio::io::AsyncWriteExt;

use super::pitr;
use crate::command::TenantArg;
use crate::tenant::Tenant;

/// The recovery time objective bascule is held to (DESIGN: 4 hours).
const RTO_TARGET: Duration = Duration::from_secs(4 * 3600);

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    tenant: TenantArg,
    /// The customer's age identity file (AGE-SECRET-KEY-1…). Read once,
    /// kept in memory only.
    #[arg(long)]
    identity: PathBuf,
    /// `latest`, a snapshot name, or its short id.
    #[arg(long, default_value = "latest")]
    snapshot: String,
    /// Target database, e.g. `postgres://user@host:5432/db` (it must exist;
    /// the password comes from PGPASSWORD or ~/.pgpass, never the command line).
    #[arg(long, required_unless_present_any = ["pitr", "output"])]
    target: Option<String>,
    /// Write the snapshot's byte stream (a `pg_dump -Fc` file, or what a
    /// `command` source printed) to this new file instead, mode 0600. It
    /// is written to FILE.partial and renamed only once the whole stream
    /// has matched the hash recorded at export. The data is then in clear
    /// on this machine: remove the file when done.
    #[arg(long, conflicts_with_all = ["target", "pitr"])]
    output: Option<PathBuf>,
    /// Do not give the restored objects their owners: everything is owned
    /// by the role --target connects as (for a server whose roles differ).
    /// By default owners are kept, and a role the target lacks is reported
    /// before anything is restored.
    #[arg(long)]
    no_owner: bool,
    /// Do not restore privileges (GRANT/REVOKE, default privileges).
    #[arg(long)]
    no_privileges: bool,
    /// Give role OLD's objects and privileges to role NEW of the target
    /// instead (repeatable), for a target whose roles are named otherwise.
    #[arg(long = "map-role", value_name = "OLD=NEW", value_parser = role_pair)]
    map_role: Vec<(String, String)>,
    /// Tables loaded at once, each over its own connection, then indexes
    /// and constraints built N at a time (`pg_restore -j N`). Default: the
    /// number of cores. The restore goes into a new database cloned from
    /// the target, renamed to the target's name once complete, so a failed
    /// restore leaves the target as it was; this needs CREATEDB and no other
    /// session on the target, else (and with --jobs 0, or for an export
    /// that did not record its layout) it runs as one stream into one
    /// pg_restore, in one transaction.
    #[arg(long, short = 'j', value_name = "N")]
    jobs: Option<usize>,
    #[command(flatten)]
    pitr: pitr::PitrArgs,
}

pub async fn main(a: Args) -> anyhow::Result<ExitCode> {
    let (c, t) = a.tenant.open()?;
    let identities = Identities::load(&a.identity).context("--identity")?;
    let concurrency = c.config.restore.concurrency;
    if a.pitr.pitr {
        return pitr::main(&c, t, identities, a.pitr).await;
    }
    if let Some(output) = a.output {
        let t0 = Instant::now();
        let r = extract(&t, &a.snapshot, identities, concurrency, &output).await?;
        println!(
            "wrote snapshot {} ({} bytes, {} chunks, stream hash verified) to {} in {:.1}s; served: {}",
            r.snapshot,
            r.bytes,
            r.chunks,
            output.display(),
            t0.elapsed().as_secs_f64(),
            served(&r.served)
        );
        return Ok(ExitCode::SUCCESS);
    }
    let target = a.target.context("give --target, --output or --pitr")?;
    let mut target = bascule_core::postgres::Dsn::parse(&target).context("--target")?;
    // as libpq does: a password not in the DSN may be in PGPASSWORD
    if target.password.is_none() {
        target.password = std::env::var("PGPASSWORD").ok();
    }
    let req = RestoreRequest {
        snapshot: a.snapshot,
        target,
        identities,
        concurrency,
        pg_restore: c.config.restore.pg_restore.clone(),
        progress: true,
        keep: Keep { owners: !a.no_owner, privileges: !a.no_privileges },
        map_roles: role_map(a.map_role)?,
        jobs: a.jobs.unwrap_or_else(default_jobs),
    };
    let t0 = Instant::now();
    let r = run(&t, req).await?;
    print_restored(&r, t0.elapsed());
    if r.mismatches.is_empty() {
        crate::projection::record(&c.config.state_dir, &t.name, r.bytes, t0.elapsed());
    }
    Ok(if r.mismatches.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn served(s: &BTreeMap<String, u64>) -> String {
    s.iter().map(|(p, n)| format!("{p} {n} B")).collect::<Vec<_>>().join(", ")
}

fn print_restored(r: &RestoreReport, took: Duration) {
    println!(
        "restored snapshot {} ({} bytes, {} chunks) in {:.1}s; served: {}",
        r.snapshot,
        r.bytes,
        r.chunks,
        r.fetch_and_restore.as_secs_f64(),
        served(&r.served)
    );
    for (table, want, got) in &r.mismatches {
        println!("MISMATCH {table}: {want} rows at export, {} after restore", got.map(|g| g.to_string()).unwrap_or("no table".into()));
    }
    println!(
        "row counts: {} table(s), {} row(s): {}",
        r.tables_checked,
        r.rows_checked,
        if r.mismatches.is_empty() { "identical to the export" } else { "DIFFERENT" }
    );
    let age = chrono::Utc::now() - r.recovery_point;
    println!(
        "recovery point: {} (data as of {} min ago); restore and check took {:.1}s against the {} h target: {}",
        r.recovery_point.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        age.num_minutes(),
        took.as_secs_f64(),
        RTO_TARGET.as_secs() / 3600,
        if took < RTO_TARGET && r.mismatches.is_empty() { "within target" } else { "MISSED" }
    );
}

pub struct RestoreRequest {
    pub snapshot: String,
    pub target: bascule_core::postgres::Dsn,
    pub identities: Identities,
    pub concurrency: usize,
    pub pg_restore: Option<PathBuf>,
    /// Show how far it got (a bar on a terminal, lines otherwise): the
    /// command line does; a drill shows its own line.
    pub progress: bool,
    /// Owners and privileges kept.
    pub keep: Keep,
    /// Roles renamed on the way.
    pub map_roles: BTreeMap<String, String>,
    /// Tables loaded at once (0: one stream into one pg_restore).
    pub jobs: usize,
}

/// `--jobs` by default: the number of cores.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// `OLD=NEW`.
fn role_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((old, new)) if !old.is_empty() && !new.is_empty() && old.len() <= 63 && new.len() <= 63 => {
            Ok((old.to_string(), new.to_string()))
        }
        _ => Err(format!("{s:?}: expected OLD=NEW, two role names (PostgreSQL's are 1 to 63 bytes)")),
    }
}

/// The renames, each old role once.
pub fn role_map(pairs: impl IntoIterator<Item = (String, String)>) -> anyhow::Result<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    for (old, new) in pairs {
        if let Some(before) = map.insert(old.clone(), new.clone()) {
            bail!("--map-role maps {old} twice (to {before} and to {new})");
        }
    }
    Ok(map)
}

#[derive(Debug)]
pub struct RestoreReport {
    pub snapshot: String,
    /// The recovery point: when the export's consistent snapshot was taken.
    pub recovery_point: chrono::DateTime<chrono::Utc>,
    pub bytes: u64,
    pub chunks: usize,
    /// Bytes of ciphertext served by each provider.
    pub served: BTreeMap<String, u64>,
    pub fetch_and_restore: Duration,
    pub check: Duration,
    pub tables_checked: usize,
    pub rows_checked: u64,
    /// Tables whose row count differs: (table, at export, after restore).
    pub mismatches: Vec<(String, u64, Option<u64>)>,
}

/// The export `wanted` names (`latest`: the newest pg_dump export, whatever
/// kind of snapshot HEAD names), with its manifest.
pub async fn resolve_export(tenant: &Tenant, wanted: &str) -> anyhow::Result<(String, Manifest)> {
    let mut name = tenant.resolve(wanted).await?;
    let (mut m, _) = tenant.manifest(&name).await?;
    if m.kind != SnapshotKind::PgDump && wanted == "latest" {
        // HEAD names the newest snapshot of any kind: take the newest export
        let names = Tenant::snapshot_names(&tenant.listings().await);
        for n in names.iter().rev() {
            let Ok((c, _)) = tenant.manifest(n).await else { continue };
            if c.kind == SnapshotKind::PgDump {
                (name, m) = (n.clone(), c);
                break;
            }
        }
    }
    if m.kind != SnapshotKind::PgDump {
        bail!("snapshot {name} is a {} export; restore into PostgreSQL needs a pg_dump one", m.kind);
    }
    Ok((name, m))
}

/// What `restore --output` wrote.
pub struct Extracted {
    pub snapshot: String,
    pub bytes: u64,
    pub chunks: usize,
    pub served: BTreeMap<String, u64>,
}

/// Writes snapshot `wanted` (any kind) to the new file `out`, through
/// `out.partial`, renamed once the stream hash matched; removed on failure.
pub async fn extract(tenant: &Tenant, wanted: &str, ids: Identities, concurrency: usize, out: &Path) -> anyhow::Result<Extracted> {
    if out.exists() {
        bail!("{} exists; refusing to overwrite it", out.display());
    }
    let name = tenant.resolve(wanted).await?;
    let (m, _) = tenant.manifest(&name).await?;
    let ids = Arc::new(ids);
    let index = Arc::new(open_index(&tenant.replicated, &m, &ids).await?);
    let m = Arc::new(m);
    let progress = Progress::bytes(format!("snapshot {name}"), Some(m.source_bytes));
    progress.phase(&format!(
        "writing snapshot {name} ({}, {} chunks) to {}",
        bascule_core::progress::human(m.source_bytes),
        index.chunk_count(),
        out.display()
    ));
    let mut partial = out.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .await
        .with_context(|| format!("cannot create {}", partial.display()))?;
    let file = Arc::new(tokio::sync::Mutex::new(file));
    let sink = {
        let file = file.clone();
        move |plain: Vec<u8>| {
            let file = file.clone();
            Box::pin(async move { file.lock().await.write_all(&plain).await.map_err(RestoreError::sink("writing the output file")) })
                as futures::future::BoxFuture<'static, Result<(), RestoreError>>
        }
    };
    let written = async {
        let served = stream_chunks(&tenant.replicated, m.clone(), index.clone(), ids, concurrency, &progress, sink).await?;
        progress.finish();
        file.lock().await.sync_all().await.context("writing the output file")?;
        tokio::fs::rename(&partial, out).await.with_context(|| format!("renaming {} to {}", partial.display(), out.display()))?;
        Ok::<_, anyhow::Error>(served)
    }
    .await;
    match written {
        Ok(served) => Ok(Extracted { snapshot: name, bytes: m.source_bytes, chunks: index.chunk_count(), served }),
        Err(e) => {
            let _ = tokio::fs::remove_file(&partial).await;
            Err(e.context(format!("snapshot {name}: nothing written to {}", out.display())))
        }
    }
}

pub async fn run(tenant: &Tenant, req: RestoreRequest) -> anyhow::Result<RestoreReport> {
    let (name, m) = resolve_export(tenant, &req.snapshot).await?;
    let ids = Arc::new(req.identities);
    let index = Arc::new(open_index(&tenant.replicated, &m, &ids).await?);
    let m = Arc::new(m);
    let missing = missing_roles(&index, &req.target, req.keep, &req.map_roles).await.context("checking the roles the export needs")?;
    if !missing.is_empty() {
        bail!("snapshot {name}: {}", missing_roles_advice(&missing));
    }
    let progress = if req.progress { Progress::bytes(format!("restore of {name}"), Some(m.source_bytes)) } else { Progress::hidden() };
    progress.phase(&format!(
        "restoring snapshot {name} ({}, {} chunks, taken {}) from the providers into {}",
        bascule_core::progress::human(m.source_bytes),
        index.chunk_count(),
        m.started_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        req.target.conninfo
    ));

    let t0 = Instant::now();
    let prog = req.pg_restore.clone().unwrap_or_else(|| PathBuf::from("pg_restore"));
    let mut parallel = None;
    if req.jobs > 0 {
        let to =
            Parallel { prog: &prog, target: &req.target, progress: &progress, keep: req.keep, map_roles: &req.map_roles, jobs: req.jobs };
        match parallel::restore(&tenant.replicated, m.clone(), index.clone(), ids.clone(), req.concurrency, to).await {
            Ok(Outcome::Done { served, timings }) => {
                progress.phase(&format!("restored in parallel ({} jobs): {timings}", req.jobs));
                parallel = Some(served)
            }
            Ok(Outcome::Serial(why)) => progress.phase(&format!("restoring as one stream into one pg_restore, in one transaction: {why}")),
            Err(e) => {
                progress.finish();
                return Err(anyhow::Error::new(e).context(format!("restore of {name}: the target is as it was")));
            }
        }
    }
    let served = match parallel {
        Some(served) => served,
        None => {
            let to = PgRestore { prog: &prog, target: &req.target, progress: &progress, keep: req.keep, map_roles: &req.map_roles };
            let served = pg_restore(&tenant.replicated, m.clone(), index.clone(), ids, req.concurrency, to).await;
            progress.finish();
            served?
        }
    };
    progress.finish();
    progress.finish();
    let fetch_and_restore = t0.elapsed();

    progress.phase("restored; comparing each table's row count with the export's");
    let t1 = Instant::now();
    let counts = compare_row_counts(&index, &req.target).await?;
    Ok(RestoreReport {
        snapshot: name,
        recovery_point: m.started_at,
        bytes: m.source_bytes,
        chunks: index.chunk_count(),
        served,
        fetch_and_restore,
        check: t1.elapsed(),
        tables_checked: counts.tables,
        rows_checked: counts.rows,
        mismatches: counts.mismatches,
    })
}
