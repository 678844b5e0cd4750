//! `restore --pitr`: a whole PostgreSQL cluster, at any point the WAL covers.
//!
//! 1. the newest base backup that ends before the target ([`Target`]) is
//!    fetched, checked and unpacked into `--pgdata` ([`unpack`]);
//! 2. PostgreSQL starts in recovery with `restore_command` calling
//!    `bascule-controller wal-fetch` ([`wal_fetch`]), which asks this
//!    process over a unix socket inside the data directory ([`wal_server`]):
//!    the identity stays in this process's memory, and plaintext WAL is only
//!    ever written into the data directory; the next segments are fetched
//!    (either provider, verified) ahead of the server's requests, into a
//!    spool that `wal-fetch` renames them from;
//! 3. the server stops at the target and promotes; the recovery point reached
//!    (last replayed commit time and LSN) is read back from it.
mod lines;
pub mod standby;
mod target;
mod unpack;
mod wal_fetch;
mod wal_server;

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bascule_core::keys::Identities;
use bascule_core::manifest::{Manifest, SnapshotKind};
use bascule_core::wal::{WalFileKind, WalName};

pub use target::Target;
use unpack::unpack_base;
pub use wal_fetch::{fetch_client, FetchArgs};
pub use wal_server::Standing;
use wal_server::{Spool, WalServer};

use crate::context::Controller;
use crate::os_user::{as_account, command_as, Account};
use crate::tenant::Tenant;

/// The recovery time objective bascule is held to (DESIGN: 4 hours).
const RTO_TARGET: Duration = Duration::from_secs(4 * 3600);

/// The point-in-time options of `restore`.
#[derive(clap::Args)]
pub struct PitrArgs {
    /// Point-in-time restore of the whole cluster: the newest base backup
    /// before the target, then WAL replayed up to it (the end of the
    /// archive unless --at or --lsn), then promotion.
    #[arg(long, requires = "pgdata", conflicts_with_all = ["target", "snapshot"])]
    pub pitr: bool,
    /// PITR: stop at this time (RFC 3339, e.g. 2026-11-22T17:40:00+01:00).
    #[arg(long, requires = "pitr", conflicts_with = "lsn")]
    at: Option<String>,
    /// PITR: stop at this LSN (e.g. 0/3000060).
    #[arg(long, requires = "pitr")]
    lsn: Option<String>,
    /// PITR: the new data directory (must not exist or be empty).
    #[arg(long)]
    pgdata: Option<PathBuf>,
    /// PITR: port of the restored server.
    #[arg(long, default_value_t = 5432)]
    port: u16,
    /// PITR: the account that runs PostgreSQL (default `postgres` when
    /// run as root, else the current one).
    #[arg(long)]
    os_user: Option<String>,
    /// PITR: a superuser of the restored cluster, to read the recovery point.
    #[arg(long, default_value = "postgres")]
    db_user: String,
    /// PITR: stop the server once the recovery point is read (default:
    /// leave it running).
    #[arg(long)]
    stop: bool,
    /// PITR: when WAL files are missing on both providers, end the restore
    /// where the WAL stops and say so, instead of failing.
    #[arg(long, requires = "pitr")]
    accept_gap: bool,
}

pub(super) async fn main(c: &Controller, t: Tenant, identities: Identities, a: PitrArgs) -> anyhow::Result<ExitCode> {
    let target = match (a.at, a.lsn) {
        (Some(at), _) => Target::parse(&at)?,
        (_, Some(l)) => Target::Lsn(l.parse()?),
        _ => Target::Latest,
    };
    let req = PitrRequest {
        target: target.clone(),
        pgdata: a.pgdata.context("--pitr needs --pgdata")?,
        port: a.port,
        identities: Arc::new(identities),
        concurrency: c.config.restore.concurrency,
        bindir: c.config.restore.pg_bindir()?,
        os_user: a.os_user.or_else(crate::os_user::for_postgres),
        db_user: a.db_user,
        stop: a.stop,
        accept_gap: a.accept_gap,
        archive_command: None,
        progress: true,
    };
    let tenant = t.name.clone();
    let r = run(t, req).await?;
    crate::projection::record(&c.config.state_dir, &tenant, r.base_backup_bytes + r.wal_bytes, r.total);
    println!(
        "restored base backup {} ({} bytes) and {} WAL file(s) ({} bytes), target {target}",
        r.base_backup, r.base_backup_bytes, r.wal_files, r.wal_bytes
    );
    println!(
        "recovery point: last replayed commit {}, LSN {}, now on timeline {}",
        r.last_commit.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)).unwrap_or("none (no transaction replayed)".into()),
        r.replay_lsn.as_deref().unwrap_or("-"),
        r.timeline
    );
    println!(
        "phases: base backup {:.1}s, WAL replay {:.1}s; total {:.1}s against the {} h target: {}",
        r.fetch_base.as_secs_f64(),
        r.replay.as_secs_f64(),
        r.total.as_secs_f64(),
        RTO_TARGET.as_secs() / 3600,
        if r.total < RTO_TARGET { "within target" } else { "MISSED" }
    );
    if let Some(gap) = &r.gap {
        println!("GAP (accepted): {gap}");
    }
    Ok(ExitCode::SUCCESS)
}

pub struct PitrRequest {
    pub target: Target,
    pub pgdata: PathBuf,
    pub port: u16,
    /// The customer's identity, held in memory only.
    pub identities: Arc<Identities>,
    pub concurrency: usize,
    /// Directory of `pg_ctl` and `postgres`.
    pub bindir: PathBuf,
    /// Run PostgreSQL (and unpack its files) as this account (when root).
    pub os_user: Option<String>,
    /// Superuser of the restored cluster, to read the recovery point.
    pub db_user: String,
    /// Stop the server once the recovery point is read.
    pub stop: bool,
    /// Succeed even when recovery to the end of the archive stopped before
    /// the newest WAL the signed HEADs and records name (saying so).
    pub accept_gap: bool,
    /// A standby's `archive_command` once promoted (site B's own agent):
    /// `archive_mode` is on from the start, so that the new timeline's first
    /// files (its history file, the partial segment) are archived too.
    pub archive_command: Option<String>,
    /// Show how far the base backup got (a bar on a terminal, lines
    /// otherwise): the command line does; a drill shows its own line.
    pub progress: bool,
}

impl PitrRequest {
    /// The account that runs PostgreSQL, when this process switches to it.
    fn account(&self) -> anyhow::Result<Option<Account>> {
        self.os_user.as_deref().map(crate::os_user::owner).transpose()
    }
}

#[derive(Debug)]
pub struct PitrReport {
    pub base_backup: String,
    pub base_backup_bytes: u64,
    pub wal_files: u64,
    pub wal_bytes: u64,
    /// Time of the last transaction replayed (the recovery point), if any was.
    pub last_commit: Option<chrono::DateTime<chrono::Utc>>,
    pub replay_lsn: Option<String>,
    pub timeline: i32,
    pub fetch_base: Duration,
    pub replay: Duration,
    pub total: Duration,
    /// Where recovery to the end of the archive stopped short (accepted with
    /// `accept_gap`).
    pub gap: Option<String>,
}

/// Picks the newest base backup that is complete before the target.
pub(crate) async fn choose_base_backup(tenant: &Tenant, target: &Target) -> anyhow::Result<Manifest> {
    let names = Tenant::snapshot_names(&tenant.listings().await);
    for name in names.iter().rev() {
        // names begin with their start time: skip those that start after a time target
        if let Target::Time(t) = target {
            let started = name.get(..16).and_then(|p| chrono::NaiveDateTime::parse_from_str(p, "%Y%m%dT%H%M%SZ").ok());
            if started.is_some_and(|s| s.and_utc() > *t) {
                continue;
            }
        }
        let m = match tenant.manifest(name).await {
            Ok((m, _)) => m,
            Err(e) => {
                tracing::warn!(snapshot = %name, error = %e, "A snapshot that verifies on no provider is passed over");
                continue;
            }
        };
        let (SnapshotKind::Basebackup, Some(wal)) = (m.kind, &m.wal) else { continue };
        let fits = match target {
            Target::Latest => true,
            Target::Time(t) => m.finished_at <= *t,
            Target::Lsn(l) => wal.stop <= *l,
        };
        if fits {
            return Ok(m);
        }
    }
    bail!("tenant {}: no base backup complete before {target}; `bascule-controller snapshots` lists them", tenant.name)
}

/// The WAL server's spool in a data directory ([`wal_server`]).
fn spool_of(pgdata: &Path) -> PathBuf {
    pgdata.join("bascule-wal-spool")
}

/// Quotes a value for postgresql.conf.
fn conf_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// A new (or empty) data directory, mode 0700, given to the account that
/// runs PostgreSQL: through a handle on the directory itself (no link
/// followed), so that what its parent holds by then cannot be swapped in.
fn new_pgdata(pgdata: &Path, account: Option<Account>) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if pgdata.exists() && std::fs::read_dir(pgdata)?.next().is_some() {
        bail!("{} is not empty; give a new or empty directory for the restored cluster", pgdata.display());
    }
    std::fs::create_dir_all(pgdata)?;
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::NOFOLLOW).bits() as i32)
        .open(pgdata)
        .with_context(|| format!("cannot open {} (a directory, not a link)", pgdata.display()))?;
    dir.set_permissions(std::fs::Permissions::from_mode(0o700))?;
    if let Some(a) = account {
        std::os::unix::fs::fchown(&dir, Some(a.uid), Some(a.gid))?;
    }
    Ok(())
}

/// Listens on `socket` (in the data directory), made by the account that
/// runs PostgreSQL: the socket is that account's, and `wal-fetch`, run by
/// the server, may connect.
fn listen(socket: &Path, account: Option<Account>) -> anyhow::Result<tokio::net::UnixListener> {
    let l = as_account(account, || std::os::unix::net::UnixListener::bind(socket))?
        .with_context(|| format!("cannot listen on {}", socket.display()))?;
    l.set_nonblocking(true)?;
    Ok(tokio::net::UnixListener::from_std(l)?)
}

/// Recovery settings (step 2): `restore_command` through the WAL server's
/// socket, the target, promotion, and a cluster that archives nowhere. A
/// standby (`standby.signal`) has no target: it replays what comes, asking
/// again every second for the next file, until promoted.
fn recovery_settings(req: &PitrRequest, socket: &Path, standby: bool) -> anyhow::Result<()> {
    let pgdata = &req.pgdata;
    let exe = std::env::current_exe()?;
    let restore_command = format!(
        "{} wal-fetch{} --socket {} %f %p",
        shell_quote(&exe.to_string_lossy()),
        if standby { " --standby" } else { "" },
        shell_quote(&socket.to_string_lossy())
    );
    let mut conf = String::from(if standby { "\n# bascule: standby settings\n" } else { "\n# bascule: point-in-time recovery settings\n" });
    let mut set = |k: &str, v: &str| conf.push_str(&format!("{k} = {}\n", conf_quote(v)));
    set("restore_command", &restore_command);
    match &req.target {
        Target::Latest => {}
        Target::Time(t) => set("recovery_target_time", &t.format("%Y-%m-%d %H:%M:%S%.6f%:z").to_string()),
        Target::Lsn(l) => set("recovery_target_lsn", &l.to_string()),
    }
    if standby {
        set("wal_retrieve_retry_interval", "1s");
        set("hot_standby", "on");
    } else {
        set("recovery_target_action", "promote");
    }
    set("recovery_target_timeline", "latest");
    match req.archive_command.as_deref().filter(|_| standby) {
        // archives nothing while in recovery; from the promotion on, the new timeline
        Some(cmd) => {
            set("archive_mode", "on");
            set("archive_command", cmd);
        }
        // the restored cluster must not archive into the source's spool
        None => set("archive_mode", "off"),
    }
    set("port", &req.port.to_string());
    set("listen_addresses", "localhost");
    set("unix_socket_directories", &pgdata.to_string_lossy());
    let signal = if standby { "standby.signal" } else { "recovery.signal" };
    // written as the server's account: its files, which it may have replaced by links
    as_account(req.account()?, || {
        std::fs::OpenOptions::new().append(true).create(true).open(pgdata.join("postgresql.auto.conf"))?.write_all(conf.as_bytes())?;
        std::fs::write(pgdata.join(signal), b"")
    })??;
    Ok(())
}

/// Where recovery ended: the last replayed commit, LSN and timeline.
struct Reached {
    last_commit: Option<chrono::DateTime<chrono::Utc>>,
    replay_lsn: Option<String>,
    timeline: i32,
}

/// The last lines of the recovery's server log, read as the server's
/// account (the log lies in its directory: a link there must not lead this
/// process to read what that account may not) and only if it is a file.
fn log_tail(log: &Path, account: Option<Account>) -> String {
    use std::io::{Read, Seek};
    use std::os::unix::fs::OpenOptionsExt;
    const TAIL: u64 = 16 * 1024;
    let read = || -> std::io::Result<String> {
        let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
        let mut f = std::fs::OpenOptions::new().read(true).custom_flags(flags.bits() as i32).open(log)?;
        let m = f.metadata()?;
        if !m.is_file() {
            return Err(std::io::Error::other("not a file"));
        }
        f.seek(std::io::SeekFrom::Start(m.len().saturating_sub(TAIL)))?;
        let mut b = Vec::new();
        f.take(TAIL).read_to_end(&mut b)?;
        Ok(String::from_utf8_lossy(&b).into_owned())
    };
    let t = as_account(account, read).and_then(|r| r).unwrap_or_else(|e| format!("(cannot read it: {e})"));
    t.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// Step 3: starts the server, waits for the promotion, reads where it got to.
async fn recover(req: &PitrRequest) -> anyhow::Result<Reached> {
    let pgdata = &req.pgdata;
    let log = pgdata.join("bascule-recovery.log");
    let account = req.account()?;
    let out = command_as(&req.os_user, &req.bindir.join("pg_ctl"))
        .arg("-D")
        .arg(pgdata)
        .arg("-l")
        .arg(&log)
        .args(["-w", "-t", "86400", "start"])
        .stdin(Stdio::null())
        .output()
        .await
        .context("cannot run pg_ctl")?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stderr);
        bail!("PostgreSQL did not start ({}): {}\nserver log ({}):\n{}", out.status, said.trim(), log.display(), log_tail(&log, account));
    }
    let mut pg = tokio_postgres::Config::new();
    pg.host_path(pgdata).port(req.port).user(&req.db_user).dbname("postgres");
    let (client, conn) = bascule_core::postgres::Connect::local(pg)
        .connect()
        .await
        .with_context(|| format!("cannot connect to the restored cluster as {}", req.db_user))?;
    let conn = tokio::spawn(conn);
    loop {
        match client.query_one("SELECT pg_is_in_recovery()", &[]).await {
            Ok(row) if !row.get::<_, bool>(0) => break,
            Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => {
                bail!("the server stopped during recovery ({e}); server log ({}):\n{}", log.display(), log_tail(&log, account))
            }
        }
    }
    let row = client
        .query_one(
            "SELECT extract(epoch FROM pg_last_xact_replay_timestamp())::float8, pg_last_wal_replay_lsn()::text, \
             (SELECT timeline_id FROM pg_control_checkpoint())",
            &[],
        )
        .await?;
    let last_commit = row.get::<_, Option<f64>>(0).and_then(|s| chrono::DateTime::from_timestamp_millis((s * 1000.0).round() as i64));
    let reached = Reached { last_commit, replay_lsn: row.get(1), timeline: row.get(2) };
    drop(client);
    let _ = conn.await;
    Ok(reached)
}

pub async fn run(tenant: Tenant, req: PitrRequest) -> anyhow::Result<PitrReport> {
    let t0 = Instant::now();
    let tenant = Arc::new(tenant);
    let m = choose_base_backup(&tenant, &req.target).await?;
    if let Some(w) = &m.wal {
        tracing::info!(base_backup = %m.name, start = %w.start, stop = %w.stop, "Base backup chosen");
    }
    let account = req.account()?;
    new_pgdata(&req.pgdata, account)?;
    let ids = req.identities.clone();
    // the WAL archive is listed, and the first segments recovery replays
    // fetched, while the base backup unpacks
    let wal_server = async {
        let spool = Spool { dir: spool_of(&req.pgdata), account };
        let server = Arc::new(WalServer::new(tenant.clone(), ids.clone(), false, spool).await?);
        if let Some(w) = &m.wal {
            server.warm(w).await;
        }
        anyhow::Ok(server)
    };
    let (unpacked, server) = tokio::join!(unpack_base(&tenant, &m, &ids, &req), wal_server);
    unpacked?;
    let server = server?;
    let fetch_base = t0.elapsed();
    tracing::info!(seconds = fetch_base.as_secs_f64(), "Base backup in place");

    let socket = req.pgdata.join("bascule-wal.sock");
    let listener = listen(&socket, account)?;
    let serving = tokio::spawn(server.clone().serve(listener));
    recovery_settings(&req, &socket, false)?;

    let t1 = Instant::now();
    let reached = recover(&req).await;
    serving.abort();
    let _ = std::fs::remove_file(&socket);
    Spool::remove(&spool_of(&req.pgdata));
    let served = server.served();
    let reached = reached.map_err(|e| match served.missing.first() {
        Some(m) => e.context(format!("the WAL archive lacks {} on both providers", m.name)),
        None => e,
    })?;
    let replay = t1.elapsed();
    let gap = match &req.target {
        Target::Latest => archive_gap(&tenant, &server, &served).await,
        _ => None,
    };
    if let Some(g) = gap.as_ref().filter(|_| !req.accept_gap) {
        stop_server(&req).await;
        bail!(
            "{g}: the restored cluster lacks the data after it, and was stopped; mend the archive (`bascule-controller wal`, `repair`), \
             or restore anyway with --accept-gap"
        );
    }
    if req.stop {
        stop_server(&req).await;
    }
    Ok(PitrReport {
        base_backup: m.name.clone(),
        base_backup_bytes: m.source_bytes,
        wal_files: served.files,
        wal_bytes: served.bytes,
        last_commit: reached.last_commit,
        replay_lsn: reached.replay_lsn,
        timeline: reached.timeline,
        fetch_base,
        replay,
        total: t0.elapsed(),
        gap,
    })
}

async fn stop_server(req: &PitrRequest) {
    let _ =
        command_as(&req.os_user, &req.bindir.join("pg_ctl")).arg("-D").arg(&req.pgdata).args(["-m", "fast", "-w", "stop"]).output().await;
}

/// When recovery to the end of the archive stopped before the newest WAL
/// segment the signed HEADs or records name: where, and the first file no
/// provider holds.
async fn archive_gap(tenant: &Tenant, server: &WalServer, served: &wal_server::Served) -> Option<String> {
    let from_heads = tenant.heads().await.into_iter().filter_map(|(_, h)| match h {
        crate::tenant::HeadState::Valid(h) => h.latest_wal.as_deref().and_then(WalName::parse),
        _ => None,
    });
    let end = from_heads
        .chain(server.newest_listed())
        .filter(|w| w.kind == WalFileKind::Segment)
        .max_by(|a, b| a.order_key().cmp(&b.order_key()))?;
    let replayed = served.newest.as_ref();
    if replayed.is_some_and(|r| r.order_key() >= end.order_key()) {
        return None;
    }
    let first_missing = served.missing.iter().find(|m| m.order_key() <= end.order_key()).map(|m| m.name.as_str()).unwrap_or("unknown");
    Some(format!(
        "recovery ended at WAL {}, before {} that the signed HEADs and records name; the first file missing on both providers: {first_missing}",
        replayed.map(|r| r.name.as_str()).unwrap_or("(none)"),
        end.name
    ))
}
