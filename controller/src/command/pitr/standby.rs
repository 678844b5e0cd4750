//! `standby`: a warm standby of a tenant's cluster, fed from both providers.
//!
//! The first run builds the cluster from the newest base backup (as a
//! point-in-time restore does) with `standby.signal` instead of a target;
//! PostgreSQL then stays in recovery, its `restore_command` asking this
//! process, over the socket in the data directory, for each next WAL file.
//! A file is served as soon as a signed record names it on either provider,
//! checked and decrypted in memory; the next ones are fetched ahead. A run on
//! a data directory that already holds the standby picks up where it stands
//! (PostgreSQL may have kept running meanwhile: its requests failed, and it
//! asked again). The identity stays in this process's memory.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bascule_core::keys::Identities;
use tokio_util::sync::CancellationToken;

use super::wal_server::{Spool, Standing, WalServer};
use super::{choose_base_backup, log_tail, new_pgdata, recovery_settings, unpack_base, PitrRequest, Target};
use crate::command::TenantArg;
use crate::os_user::command_as;
use crate::serve::metrics as m;
use crate::tenant::Tenant;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    tenant: TenantArg,
    /// The tenant's age identity file. Read once, kept in memory only.
    #[arg(long)]
    identity: PathBuf,
    /// The standby's data directory: new or empty to build it, or one a
    /// previous run built, to pick it up.
    #[arg(long)]
    pgdata: PathBuf,
    /// The standby server's port.
    #[arg(long, default_value_t = 5432)]
    port: u16,
    /// The account that runs PostgreSQL (default `postgres` when run as
    /// root, else the current one).
    #[arg(long)]
    os_user: Option<String>,
    /// A superuser of the cluster, to read where replay stands.
    #[arg(long, default_value = "postgres")]
    db_user: String,
    /// Serve the standby's metrics at http://ADDR/metrics (e.g. 127.0.0.1:9189).
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Reprotect from the first byte: once promoted, the standby archives
    /// its new timeline with this command, e.g. `bascule-agent wal-push
    /// --config /etc/bascule/agent-site-b.yaml %p` (site B's own agent).
    /// Set when the standby is built.
    #[arg(long)]
    archive_command: Option<String>,
}

/// How often the standby's server is asked where replay stands.
const WATCH_EVERY: Duration = Duration::from_secs(2);

/// The socket of the WAL server, inside the data directory.
pub fn socket_of(pgdata: &Path) -> PathBuf {
    pgdata.join("bascule-wal.sock")
}

/// Where a standby stands, asked over its socket (`None`: nobody serves it).
pub async fn standing(pgdata: &Path) -> anyhow::Result<Standing> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let socket = socket_of(pgdata);
    let mut s = tokio::net::UnixStream::connect(&socket)
        .await
        .with_context(|| format!("no standby is served at {} (is `bascule-controller standby` running?)", socket.display()))?;
    s.write_all(b"STATUS\n").await?;
    let mut line = String::new();
    tokio::io::BufReader::new(s).read_line(&mut line).await?;
    let json = line.trim_end().strip_prefix("STATUS ").with_context(|| format!("unexpected answer {line:?}"))?;
    Ok(serde_json::from_str(json)?)
}

pub async fn main(a: Args) -> anyhow::Result<ExitCode> {
    let (c, t) = a.tenant.open()?;
    let identities = Identities::load(&a.identity).context("--identity")?;
    m::register();
    let req = PitrRequest {
        target: Target::Latest,
        pgdata: a.pgdata,
        port: a.port,
        identities: Arc::new(identities),
        concurrency: c.config.restore.concurrency,
        bindir: c.config.restore.pg_bindir()?,
        os_user: a.os_user.or_else(crate::os_user::for_postgres),
        db_user: a.db_user,
        stop: false,
        accept_gap: false,
        archive_command: a.archive_command,
        progress: true,
    };
    let cancel = CancellationToken::new();
    if let Some(addr) = a.metrics {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("--metrics: cannot listen on {addr}"))?;
        let app = axum::Router::new()
            .route("/metrics", axum::routing::get(|| async { ([("content-type", "text/plain; version=0.0.4")], m::render()) }));
        tokio::spawn(async move { axum::serve(listener, app).await });
        tracing::info!(listen = %addr, "Serving the standby's metrics");
    }
    {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            cancel.cancel();
        });
    }
    match run(Arc::new(t), req, cancel).await? {
        Ended::Stopped => println!("standby stopped; PostgreSQL keeps running: run `standby` again on the same --pgdata to feed it"),
        Ended::Promoted => println!("the standby was promoted: it no longer replays the archive"),
    }
    Ok(ExitCode::SUCCESS)
}

/// The standby of the configuration's `standby:` section, for `serve`: fed
/// until cancelled; after a failure, tried again a minute later; once
/// promoted, left alone (a promoted cluster is never rebuilt on its own).
pub async fn keep(c: Arc<crate::context::Controller>, cancel: CancellationToken) {
    let Some(sb) = c.config.standby.as_ref() else { return };
    let labels = [sb.tenant.as_str()];
    loop {
        let attempt = async {
            let t = c.tenant(&sb.tenant)?;
            let req = PitrRequest {
                target: Target::Latest,
                pgdata: sb.pgdata.clone(),
                port: sb.port,
                identities: Arc::new(Identities::load(&sb.identity).context("standby.identity")?),
                concurrency: c.config.restore.concurrency,
                bindir: c.config.restore.pg_bindir()?,
                os_user: crate::os_user::for_postgres(),
                db_user: sb.db_user.clone(),
                stop: false,
                accept_gap: false,
                archive_command: sb.archive_command.clone(),
                progress: false,
            };
            run(Arc::new(t), req, cancel.clone()).await
        };
        match attempt.await {
            Ok(Ended::Stopped) => return,
            Ok(Ended::Promoted) => {
                tracing::warn!(tenant = %sb.tenant, "The standby was promoted: serve feeds it no more (remove the standby: section, or give a new pgdata)");
                return;
            }
            Err(e) => {
                m::STANDBY_UP.with_label_values(&labels).set(0);
                tracing::error!(tenant = %sb.tenant, error = format!("{e:#}"), "The standby cannot be fed; trying again in a minute");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

/// Why a standby stopped being fed.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Cancelled (PostgreSQL left running).
    Stopped,
    /// The server left recovery.
    Promoted,
}

/// Builds the standby (or picks it up), feeds it until cancelled or promoted.
pub async fn run(tenant: Arc<Tenant>, req: PitrRequest, cancel: CancellationToken) -> anyhow::Result<Ended> {
    let pgdata = &req.pgdata;
    let account = req.account()?;
    if pgdata.join("PG_VERSION").exists() {
        if !pgdata.join("standby.signal").exists() {
            bail!(
                "{} holds a cluster that is not a standby (no standby.signal): it was promoted, or is another cluster; \
                 give a new directory to build a standby",
                pgdata.display()
            );
        }
        tracing::info!(pgdata = %pgdata.display(), "Picking up the standby where it stands");
    } else {
        let m = choose_base_backup(&tenant, &Target::Latest).await?;
        tracing::info!(base_backup = %m.name, "Building the standby from the newest base backup");
        new_pgdata(pgdata, account)?;
        unpack_base(&tenant, &m, &req.identities, &req).await?;
        recovery_settings(&req, &socket_of(pgdata), true)?;
    }
    let socket = socket_of(pgdata);
    let _ = std::fs::remove_file(&socket);
    let listener = super::listen(&socket, account)?;
    let spool = Spool { dir: super::spool_of(pgdata), account };
    let server = Arc::new(WalServer::new(tenant.clone(), req.identities.clone(), true, spool).await?);
    let serving = tokio::spawn(server.clone().serve(listener));
    let ended = async {
        ensure_running(&req).await?;
        watch(&tenant.name, &req, &server, &cancel).await
    }
    .await;
    serving.abort();
    let _ = std::fs::remove_file(&socket);
    Spool::remove(&super::spool_of(pgdata));
    m::STANDBY_UP.with_label_values(&[&tenant.name]).set(0);
    ended
}

/// Starts the standby's server unless it runs already.
async fn ensure_running(req: &PitrRequest) -> anyhow::Result<()> {
    let pg_ctl = req.bindir.join("pg_ctl");
    let account = req.account()?;
    let status = command_as(&req.os_user, &pg_ctl).arg("-D").arg(&req.pgdata).arg("status").stdout(Stdio::null()).status().await?;
    if status.success() {
        return Ok(());
    }
    let log = req.pgdata.join("bascule-standby.log");
    let out = command_as(&req.os_user, &pg_ctl)
        .arg("-D")
        .arg(&req.pgdata)
        .arg("-l")
        .arg(&log)
        .args(["-w", "-t", "86400", "start"])
        .stdin(Stdio::null())
        .output()
        .await
        .context("cannot run pg_ctl")?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stderr);
        bail!("the standby did not start ({}): {}\nserver log ({}):\n{}", out.status, said.trim(), log.display(), log_tail(&log, account));
    }
    tracing::info!(port = req.port, "Standby server started");
    Ok(())
}

/// Where replay stands on the standby's server.
struct Replay {
    in_recovery: bool,
    lsn: Option<u64>,
    last_commit: Option<f64>,
}

async fn replay(req: &PitrRequest) -> anyhow::Result<Replay> {
    let mut pg = tokio_postgres::Config::new();
    pg.host_path(&req.pgdata).port(req.port).user(&req.db_user).dbname("postgres").connect_timeout(Duration::from_secs(5));
    let (client, _conn) = bascule_core::postgres::Connect::local(pg).connect().await?;
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(), (pg_last_wal_replay_lsn() - '0/0')::float8, \
             extract(epoch FROM pg_last_xact_replay_timestamp())::float8",
            &[],
        )
        .await?;
    Ok(Replay { in_recovery: row.get(0), lsn: row.get::<_, Option<f64>>(1).map(|l| l as u64), last_commit: row.get(2) })
}

/// Every [`WATCH_EVERY`]: the metrics, until cancelled or promoted.
async fn watch(tenant: &str, req: &PitrRequest, server: &WalServer, cancel: &CancellationToken) -> anyhow::Result<Ended> {
    let labels = [tenant];
    let mut was_up = true;
    loop {
        let s = server.standing();
        m::STANDBY_REPLAY_LAG.with_label_values(&labels).set(s.lag_seconds);
        m::STANDBY_BEHIND.with_label_values(&labels).set(s.behind as i64);
        match replay(req).await {
            Ok(r) if !r.in_recovery => {
                tracing::info!(tenant, "The standby was promoted; it is fed no more");
                return Ok(Ended::Promoted);
            }
            Ok(r) => {
                m::STANDBY_UP.with_label_values(&labels).set(1);
                if let Some(l) = r.lsn {
                    m::STANDBY_REPLAY_LSN.with_label_values(&labels).set(l as f64);
                }
                if let Some(t) = r.last_commit {
                    m::STANDBY_LAST_REPLAY.with_label_values(&labels).set(t);
                }
                if !was_up {
                    tracing::info!(tenant, "The standby's server answers again");
                }
                was_up = true;
            }
            Err(e) => {
                m::STANDBY_UP.with_label_values(&labels).set(0);
                if was_up {
                    tracing::warn!(tenant, error = format!("{e:#}"), "The standby's server does not answer");
                }
                was_up = false;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(WATCH_EVERY) => {}
            _ = cancel.cancelled() => return Ok(Ended::Stopped),
        }
    }
}
