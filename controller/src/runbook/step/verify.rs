//! `verify`: checks of the recovered side, any of: row counts against the
//! export's, an SQL expectation, an HTTP probe, and the newest heartbeat row,
//! which gives the recovery point (the RPO of the drill).
use std::path::PathBuf;

use bascule_core::postgres::compare_row_counts;
use bascule_core::restore::open_index;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::restore::{identities, mismatches};
use super::{failed, HttpStep, Invalid, SqlStep, StepContext, StepError, StepOutcome};
use crate::command::restore::resolve_export;
use crate::runbook::template::DsnTemplate;
use crate::runbook::Runbook;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyStep {
    /// Row counts of this database must match the snapshot's manifest.
    pub row_counts: Option<RowCountCheck>,
    pub sql: Option<Box<SqlStep>>,
    pub http: Option<Box<HttpStep>>,
    /// The newest heartbeat row of this database gives the recovery point
    /// (RPO = the cut-over instant minus it).
    pub heartbeat: Option<HeartbeatCheck>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatCheck {
    /// The recovered database, where the agent wrote `bascule.heartbeat` rows.
    pub dsn: DsnTemplate,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RowCountCheck {
    pub tenant: String,
    pub identity: PathBuf,
    #[serde(default = "latest")]
    pub snapshot: String,
    pub dsn: DsnTemplate,
}

fn latest() -> String {
    "latest".into()
}

impl VerifyStep {
    pub fn validate(&self, _: &Runbook) -> Result<(), Invalid> {
        if self.row_counts.is_none() && self.sql.is_none() && self.http.is_none() && self.heartbeat.is_none() {
            return Err(Invalid::new("verify", "give row_counts, sql, http or heartbeat"));
        }
        Ok(())
    }

    pub fn needs(&self, sub: &dyn Fn(&str) -> String) -> super::needs::Needs {
        let mut n = super::needs::Needs::default();
        if let Some(r) = &self.row_counts {
            n.tenants.push(sub(&r.tenant));
            n.identities.push(sub(&r.identity.to_string_lossy()).into());
            n.dsn(&r.dsn.resolve(sub).conninfo);
        }
        if let Some(q) = &self.sql {
            n.merge(q.needs(sub));
        }
        if let Some(h) = &self.http {
            n.merge(h.needs(sub));
        }
        if let Some(h) = &self.heartbeat {
            n.dsn(&h.dsn.resolve(sub).conninfo);
        }
        n
    }

    pub fn describe(&self, sub: &dyn Fn(&str) -> String) -> String {
        let mut parts = Vec::new();
        if let Some(r) = &self.row_counts {
            parts.push(format!("row counts of {} = snapshot {} of {}", sub(&r.dsn.text), r.snapshot, sub(&r.tenant)));
        }
        parts.extend(self.sql.as_ref().map(|q| q.describe(sub)));
        parts.extend(self.http.as_ref().map(|h| h.describe(sub)));
        parts.extend(self.heartbeat.as_ref().map(|h| format!("recovery point from the newest heartbeat of {}", sub(&h.dsn.text))));
        parts.join("; ")
    }

    pub async fn run(&self, ctx: &StepContext<'_>, _: CancellationToken) -> Result<StepOutcome, StepError> {
        let mut done = StepOutcome::default();
        let mut lines = Vec::new();
        if let Some(r) = &self.row_counts {
            lines.push(row_counts(r, ctx).await?);
        }
        if let Some(q) = &self.sql {
            lines.push(format!("sql: {}", q.check(ctx).await?));
        }
        if let Some(h) = &self.http {
            lines.push(h.check(ctx).await?);
        }
        if let Some(h) = &self.heartbeat {
            let at = super::sql::newest_heartbeat(&h.dsn.resolve(&|t| ctx.sub_secrets(t))).await?;
            lines.push(format!("newest heartbeat on the recovered side: {}", at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)));
            done.recovery_point = Some(at);
        }
        done.output = lines.join("\n");
        Ok(done)
    }
}

/// Every table of the database against the export's row counts.
async fn row_counts(r: &RowCountCheck, ctx: &StepContext<'_>) -> Result<String, StepError> {
    let ids = identities(ctx, &r.identity)?;
    let t = ctx.controller()?.tenant(&ctx.sub(&r.tenant)).map_err(failed)?;
    let (name, m) = resolve_export(&t, &ctx.sub(&r.snapshot)).await.map_err(failed)?;
    let index = open_index(&t.replicated, &m, &ids).await.map_err(|e| failed(e.into()))?;
    let c = compare_row_counts(&index, &r.dsn.resolve(&|t| ctx.sub_secrets(t))).await.map_err(|e| failed(e.into()))?;
    let summary = format!("row counts: {} table(s), {} row(s) against snapshot {name}", c.tables, c.rows);
    if c.mismatches.is_empty() {
        Ok(format!("{summary}: identical"))
    } else {
        Err(StepError::Failed(format!("{summary}: DIFFERENT{}", mismatches(&c.mismatches))))
    }
}
