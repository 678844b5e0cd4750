//! `restore`: an export into a database, or a point-in-time restore of the
//! whole cluster. The identity file is read when the step runs and kept in
//! memory only.
use std::path::PathBuf;

use bascule_core::keys::Identities;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::{failed, Invalid, StepContext, StepError, StepOutcome};
use crate::command::{pitr, restore};
use crate::runbook::template::DsnTemplate;
use crate::runbook::Runbook;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreStep {
    pub tenant: String,
    /// The customer's identity file, read when the step runs (never copied).
    pub identity: PathBuf,
    /// Export restore: `latest` or a snapshot, into this database.
    pub snapshot: Option<String>,
    pub target: Option<DsnTemplate>,
    /// PITR restore into this new data directory, to `at` (a time, an LSN, or `latest`).
    pub pgdata: Option<PathBuf>,
    pub at: Option<String>,
    /// PITR: the restored server's port (default 5432; a variable may give it).
    pub port: Option<String>,
    /// PITR: a superuser of the restored cluster, to read the recovery point
    /// (default `postgres`).
    pub db_user: Option<String>,
    /// PITR to `latest`: succeed (saying so) when WAL files are missing on
    /// both providers before the newest the signed HEADs name.
    #[serde(default)]
    pub accept_gap: bool,
    /// PITR to `latest`: when `pgdata` holds a warm standby (`bascule-controller
    /// standby`), promote it once it replayed the newest WAL (or `wal`)
    /// instead of rebuilding the cluster.
    #[serde(default)]
    pub standby: bool,
    /// With `standby`: the WAL file the standby must have replayed (empty:
    /// the newest the signed HEADs name).
    #[serde(default)]
    pub wal: String,
    /// Export restore: do not give objects their owners (all owned by the
    /// target's role), for a target whose roles differ.
    #[serde(default)]
    pub no_owner: bool,
    /// Export restore: do not restore privileges.
    #[serde(default)]
    pub no_privileges: bool,
    /// Export restore: roles renamed on the way (`old: new`), for a target
    /// whose roles are named otherwise.
    #[serde(default)]
    pub map_roles: std::collections::BTreeMap<String, String>,
    /// Export restore: tables loaded at once (`restore --jobs`; default
    /// the number of cores, 0 for one stream into one pg_restore).
    pub jobs: Option<usize>,
}

/// The identity file a step names, read now, kept in memory only.
pub(super) fn identities(ctx: &StepContext<'_>, file: &std::path::Path) -> Result<Identities, StepError> {
    let identity = ctx.sub(&file.to_string_lossy());
    Identities::load(identity.as_ref()).map_err(|e| StepError::Failed(format!("identity {identity}: {e}")))
}

/// The lines of tables whose row count differs.
pub(super) fn mismatches(m: &[(String, u64, Option<u64>)]) -> String {
    m.iter()
        .map(|(table, want, got)| {
            format!("\nMISMATCH {table}: {want} rows in the export, {}", got.map(|g| g.to_string()).unwrap_or("no table".into()))
        })
        .collect()
}

impl RestoreStep {
    pub fn validate(&self, _: &Runbook) -> Result<(), Invalid> {
        match (&self.target, &self.pgdata) {
            (Some(_), None) if self.standby => {
                Err(Invalid::new("restore.standby", "a standby is promoted in place: give pgdata, not target"))
            }
            (None, Some(_)) if self.standby && self.at.as_deref().is_some_and(|a| a != "latest") => {
                Err(Invalid::new("restore.standby", "a standby is promoted at the end of the archive: leave `at` out (or `latest`)"))
            }
            (Some(_), None) | (None, Some(_)) => Ok(()),
            _ => Err(Invalid::new("restore", "give either target (an export restore) or pgdata (a point-in-time restore)")),
        }
    }

    pub fn needs(&self, sub: &dyn Fn(&str) -> String) -> super::needs::Needs {
        let tenant = sub(&self.tenant);
        let mut n = super::needs::Needs {
            tenants: vec![tenant.clone()],
            identities: vec![sub(&self.identity.to_string_lossy()).into()],
            ..Default::default()
        };
        if let Some(t) = &self.target {
            n.dsn(&t.resolve(sub).conninfo);
            n.programs.push("pg_restore");
        }
        if let Some(d) = &self.pgdata {
            n.data_dirs.push(super::needs::DataDir { tenant, pgdata: sub(&d.to_string_lossy()).into(), standby: self.standby });
            n.programs.extend(["pg_ctl", "postgres"]);
        }
        n
    }

    pub fn describe(&self, sub: &dyn Fn(&str) -> String) -> String {
        match (&self.target, &self.pgdata) {
            (Some(t), _) => {
                format!("tenant {} snapshot {} into {}", sub(&self.tenant), self.snapshot.as_deref().unwrap_or("latest"), sub(&t.text))
            }
            (_, Some(d)) => format!(
                "tenant {} point in time {} into {}{}",
                sub(&self.tenant),
                self.at.as_deref().unwrap_or("latest"),
                sub(&d.to_string_lossy()),
                if self.standby { " (or, if a standby is there, its promotion)" } else { "" }
            ),
            _ => String::new(),
        }
    }

    fn port(&self, ctx: &StepContext<'_>) -> Result<u16, StepError> {
        match &self.port {
            Some(p) => Ok(ctx.sub(p).parse().map_err(|_| format!("port {:?} is not a port number", ctx.sub(p)))?),
            None => Ok(5432),
        }
    }

    pub async fn run(&self, ctx: &StepContext<'_>, cancel: CancellationToken) -> Result<StepOutcome, StepError> {
        let c = ctx.controller()?;
        let identities = identities(ctx, &self.identity)?;
        let t = c.tenant(&ctx.sub(&self.tenant)).map_err(failed)?;
        match (&self.target, &self.pgdata) {
            (Some(target), _) => self.export(ctx, &t, target, identities).await,
            (_, Some(pgdata)) => {
                let dir = std::path::PathBuf::from(ctx.sub(&pgdata.to_string_lossy()));
                if self.standby && super::promote::is_standby(&dir) {
                    let port = self.port(ctx)?;
                    let db_user = ctx.sub(self.db_user.as_deref().unwrap_or("postgres"));
                    return super::promote::promote(ctx, &ctx.sub(&self.tenant), &dir, &ctx.sub(&self.wal), port, &db_user, cancel).await;
                }
                self.pitr(ctx, t, pgdata, identities).await
            }
            _ => Err(StepError::Failed("give either target or pgdata".into())),
        }
    }

    async fn export(
        &self,
        ctx: &StepContext<'_>,
        t: &crate::tenant::Tenant,
        target: &DsnTemplate,
        identities: Identities,
    ) -> Result<StepOutcome, StepError> {
        let cfg = &ctx.controller()?.config;
        let req = restore::RestoreRequest {
            snapshot: ctx.sub(self.snapshot.as_deref().unwrap_or("latest")),
            target: target.resolve(&|t| ctx.sub_secrets(t)),
            identities,
            concurrency: cfg.restore.concurrency,
            pg_restore: cfg.restore.pg_restore.clone(),
            progress: false,
            keep: bascule_core::postgres::Keep { owners: !self.no_owner, privileges: !self.no_privileges },
            map_roles: self.map_roles.clone(),
            jobs: self.jobs.unwrap_or_else(restore::default_jobs),
        };
        let t0 = std::time::Instant::now();
        let rep = restore::run(t, req).await.map_err(failed)?;
        if rep.mismatches.is_empty() {
            crate::projection::record(&cfg.state_dir, &t.name, rep.bytes, t0.elapsed());
        }
        let mut out = format!(
            "restored snapshot {} ({} bytes, {} chunks) in {:.1}s; {} table(s), {} row(s) checked; recovery point {}",
            rep.snapshot,
            rep.bytes,
            rep.chunks,
            rep.fetch_and_restore.as_secs_f64(),
            rep.tables_checked,
            rep.rows_checked,
            rep.recovery_point.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        if !rep.mismatches.is_empty() {
            out.push_str(&mismatches(&rep.mismatches));
            return Err(StepError::Failed(out));
        }
        Ok(StepOutcome { output: out, recovery_point: Some(rep.recovery_point), ..StepOutcome::default() })
    }

    async fn pitr(
        &self,
        ctx: &StepContext<'_>,
        t: crate::tenant::Tenant,
        pgdata: &std::path::Path,
        identities: Identities,
    ) -> Result<StepOutcome, StepError> {
        let cfg = &ctx.controller()?.config;
        let port = self.port(ctx)?;
        let req = pitr::PitrRequest {
            target: pitr::Target::parse(&ctx.sub(self.at.as_deref().unwrap_or("latest"))).map_err(failed)?,
            pgdata: ctx.sub(&pgdata.to_string_lossy()).into(),
            port,
            identities: std::sync::Arc::new(identities),
            concurrency: cfg.restore.concurrency,
            bindir: cfg.restore.pg_bindir().map_err(failed)?,
            os_user: crate::os_user::for_postgres(),
            db_user: ctx.sub(self.db_user.as_deref().unwrap_or("postgres")),
            stop: false,
            accept_gap: self.accept_gap,
            archive_command: None,
            progress: false,
        };
        let tenant = t.name.clone();
        let rep = pitr::run(t, req).await.map_err(failed)?;
        crate::projection::record(&cfg.state_dir, &tenant, rep.base_backup_bytes + rep.wal_bytes, rep.total);
        let mut output = format!(
            "restored base backup {} and {} WAL file(s) ({} bytes); last replayed commit {}, LSN {}, timeline {}; base {:.1}s, replay {:.1}s",
            rep.base_backup,
            rep.wal_files,
            rep.wal_bytes,
            rep.last_commit.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)).unwrap_or("none".into()),
            rep.replay_lsn.as_deref().unwrap_or("-"),
            rep.timeline,
            rep.fetch_base.as_secs_f64(),
            rep.replay.as_secs_f64()
        );
        if let Some(gap) = &rep.gap {
            output.push_str(&format!("\nGAP (accepted): {gap}"));
        }
        Ok(StepOutcome { output, recovery_point: rep.last_commit, ..StepOutcome::default() })
    }
}
