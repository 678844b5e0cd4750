//! `promote`: failover by promotion of a warm standby (`bascule-controller
//! standby`). Waits until the standby has replayed the newest WAL file the
//! primary's signed HEADs name (or the `wal` a previous step saved), that is
//! until PostgreSQL asked for the file after it, then promotes it. The
//! step's timeout bounds the wait.
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bascule_core::wal::{WalFileKind, WalName};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::{failed, Invalid, StepContext, StepError, StepOutcome};
use crate::command::pitr::standby;
use crate::runbook::Runbook;
use crate::tenant::HeadState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromoteStep {
    pub tenant: String,
    /// The standby's data directory (as given to `standby --pgdata`).
    pub pgdata: PathBuf,
    /// Replayed at least through this WAL file, when not empty (for example
    /// the file a `pg_switch_wal()` completed before the cut); otherwise the
    /// newest one the tenant's signed HEADs name.
    #[serde(default)]
    pub wal: String,
    /// The standby's port (default 5432; a variable may give it).
    pub port: Option<String>,
    /// A superuser of the standby, to read where it stands (default `postgres`).
    pub db_user: Option<String>,
}

/// How often the standby is asked where it stands.
const POLL: Duration = Duration::from_millis(500);

impl PromoteStep {
    pub fn validate(&self, _: &Runbook) -> Result<(), Invalid> {
        Ok(())
    }

    pub fn needs(&self, sub: &dyn Fn(&str) -> String) -> super::needs::Needs {
        let tenant = sub(&self.tenant);
        super::needs::Needs {
            tenants: vec![tenant.clone()],
            data_dirs: vec![super::needs::DataDir { tenant, pgdata: sub(&self.pgdata.to_string_lossy()).into(), standby: true }],
            programs: vec!["pg_ctl"],
            ..Default::default()
        }
    }

    pub fn describe(&self, sub: &dyn Fn(&str) -> String) -> String {
        let through = match (self.wal.is_empty(), sub(&self.wal)) {
            (true, _) => "the newest WAL the signed HEADs name".to_string(),
            (false, v) if v.is_empty() => format!("WAL {} (set while the drill runs)", self.wal),
            (false, v) => format!("WAL {v}"),
        };
        format!("the standby of tenant {} in {}, once it replayed {through}", sub(&self.tenant), sub(&self.pgdata.to_string_lossy()))
    }

    pub async fn run(&self, ctx: &StepContext<'_>, cancel: CancellationToken) -> Result<StepOutcome, StepError> {
        let pgdata: PathBuf = ctx.sub(&self.pgdata.to_string_lossy()).into();
        let port: u16 = match &self.port {
            Some(p) => ctx.sub(p).parse().map_err(|_| format!("port {:?} is not a port number", ctx.sub(p)))?,
            None => 5432,
        };
        let db_user = ctx.sub(self.db_user.as_deref().unwrap_or("postgres"));
        promote(ctx, &ctx.sub(&self.tenant), &pgdata, &ctx.sub(&self.wal), port, &db_user, cancel).await
    }
}

/// Whether `pgdata` holds a standby `bascule-controller standby` built.
pub fn is_standby(pgdata: &std::path::Path) -> bool {
    pgdata.join("standby.signal").exists() && pgdata.join("PG_VERSION").exists()
}

/// Waits until the standby in `pgdata` replayed `wanted` (a WAL file name;
/// empty: the newest the tenant's signed HEADs name), then promotes it.
pub async fn promote(
    ctx: &StepContext<'_>,
    tenant: &str,
    pgdata: &std::path::Path,
    wanted: &str,
    port: u16,
    db_user: &str,
    cancel: CancellationToken,
) -> Result<StepOutcome, StepError> {
    let c = ctx.controller()?;
    let target = if wanted.is_empty() {
        let t = c.tenant(tenant).map_err(failed)?;
        t.heads()
            .await
            .into_iter()
            .filter_map(|(_, h)| match h {
                HeadState::Valid(h) => h.latest_wal.as_deref().and_then(WalName::parse),
                _ => None,
            })
            .filter(|w| w.kind == WalFileKind::Segment)
            .max_by(|a, b| a.order_key().cmp(&b.order_key()))
            .ok_or("no signed HEAD names a WAL file: nothing tells how far the standby must replay")?
    } else {
        WalName::parse(wanted).ok_or_else(|| format!("wal {wanted:?} is not a WAL file name"))?
    };
    let t0 = Instant::now();
    let mut said = String::new();
    let asked = loop {
        match standby::standing(pgdata).await {
            Ok(s) => {
                let asked = s.asked.as_deref().and_then(WalName::parse);
                if asked.as_ref().is_some_and(|a| a.order_key() > target.order_key()) {
                    break asked.map(|a| a.name).unwrap_or_default();
                }
                let now = format!("replayed up to {} of {}", s.asked.as_deref().unwrap_or("nothing yet"), target.name);
                if now != said {
                    tracing::info!(standby = %pgdata.display(), "Waiting for the standby: {now}");
                    said = now;
                }
            }
            Err(e) => {
                let now = format!("{e:#}");
                if now != said {
                    tracing::warn!(standby = %pgdata.display(), "Waiting for the standby: {now}");
                    said = now;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = cancel.cancelled() => return Err(StepError::Cancelled),
        }
    };
    let caught_up = t0.elapsed();
    let last_commit = last_commit(pgdata, port, db_user).await.map_err(failed)?;
    let t1 = Instant::now();
    let bindir = c.config.restore.pg_bindir().map_err(failed)?;
    let out = crate::os_user::command_as(&crate::os_user::for_postgres(), &bindir.join("pg_ctl"))
        .arg("-D")
        .arg(pgdata)
        .args(["-w", "-t", "120", "promote"])
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run pg_ctl: {e}"))?;
    if !out.status.success() {
        return Err(StepError::Failed(format!("pg_ctl promote failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim())));
    }
    let timeline = timeline(pgdata, port, db_user).await.map_err(failed)?;
    Ok(StepOutcome {
        output: format!(
            "the standby replayed {} (it asked for {asked}) after {:.1}s, and was promoted in {:.1}s: now timeline {timeline}; \
             last replayed commit {}",
            target.name,
            caught_up.as_secs_f64(),
            t1.elapsed().as_secs_f64(),
            last_commit.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)).unwrap_or("none".into())
        ),
        recovery_point: last_commit,
        ..StepOutcome::default()
    })
}

async fn client(pgdata: &std::path::Path, port: u16, user: &str) -> anyhow::Result<tokio_postgres::Client> {
    let mut pg = tokio_postgres::Config::new();
    pg.host_path(pgdata).port(port).user(user).dbname("postgres").connect_timeout(Duration::from_secs(10));
    Ok(bascule_core::postgres::Connect::local(pg).connect().await?.0)
}

async fn last_commit(pgdata: &std::path::Path, port: u16, user: &str) -> anyhow::Result<Option<chrono::DateTime<chrono::Utc>>> {
    let row =
        client(pgdata, port, user).await?.query_one("SELECT extract(epoch FROM pg_last_xact_replay_timestamp())::float8", &[]).await?;
    Ok(row.get::<_, Option<f64>>(0).and_then(|s| chrono::DateTime::from_timestamp_millis((s * 1000.0).round() as i64)))
}

/// The timeline the promoted server writes (from its current WAL file's name).
async fn timeline(pgdata: &std::path::Path, port: u16, user: &str) -> anyhow::Result<u32> {
    let c = client(pgdata, port, user).await?;
    loop {
        let row = c
            .query_one(
                "SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() THEN '' ELSE pg_walfile_name(pg_current_wal_lsn()) END",
                &[],
            )
            .await?;
        if !row.get::<_, bool>(0) {
            let name: String = row.get(1);
            return WalName::parse(&name).map(|w| w.timeline).ok_or_else(|| anyhow::anyhow!("odd WAL file name {name:?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
