//! `sql`: one query; with `expect`, the first column of the first row (as
//! text) must equal it; with `save_as`, that value becomes a variable of the
//! steps after. And the heartbeat probe of `verify`.
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::{Invalid, StepContext, StepError, StepOutcome};
use crate::runbook::Runbook;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlStep {
    pub dsn: String,
    pub query: String,
    /// The first column of the first row, as text, must equal this.
    pub expect: Option<String>,
    /// Keep the first column of the first row as this variable, for later
    /// steps (for example the WAL file a `pg_switch_wal()` completed).
    pub save_as: Option<String>,
}

impl SqlStep {
    pub fn validate(&self, runbook: &Runbook) -> Result<(), Invalid> {
        if let Some(name) = &self.save_as {
            if !runbook.variables.contains_key(name) {
                return Err(Invalid::new(
                    "sql.save_as",
                    format!("{name:?} is not a variable; define it under `variables:` (its value before the step runs)"),
                ));
            }
        }
        Ok(())
    }

    pub fn describe(&self, sub: &dyn Fn(&str) -> String) -> String {
        format!(
            "{:?} on {}{}{}",
            sub(&self.query),
            sub(&self.dsn),
            self.expect.as_ref().map(|e| format!(" → {e:?}")).unwrap_or_default(),
            self.save_as.as_ref().map(|v| format!(" → ${{{v}}}")).unwrap_or_default()
        )
    }

    pub async fn run(&self, ctx: &StepContext<'_>, _: CancellationToken) -> Result<StepOutcome, StepError> {
        let got = self.check(ctx).await?;
        let save = self.save_as.clone().map(|name| (name, got.clone()));
        Ok(StepOutcome { output: got, save, ..StepOutcome::default() })
    }

    /// The query and its expectation; also one of `verify`'s.
    pub async fn check(&self, ctx: &StepContext<'_>) -> Result<String, String> {
        let got = first_value(&ctx.sub(&self.dsn), &ctx.sub(&self.query)).await?;
        match &self.expect {
            Some(want) if got.as_deref() != Some(want.as_str()) => {
                Err(format!("expected {want:?}, got {}", got.map(|g| format!("{g:?}")).unwrap_or("no row".into())))
            }
            _ => Ok(got.unwrap_or_default()),
        }
    }
}

/// What the server said, rather than tokio-postgres's bare "db error".
fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(c) = src {
                s.push_str(&format!(": {c}"));
                src = c.source();
            }
            s
        }
    }
}

/// The first column of the first row, as text (`None`: no row, or NULL).
async fn first_value(dsn: &str, query: &str) -> Result<Option<String>, String> {
    let cfg: tokio_postgres::Config = dsn.parse().map_err(|e| format!("bad dsn: {e}"))?;
    let (client, conn) = cfg.connect(tokio_postgres::NoTls).await.map_err(|e| format!("cannot connect: {}", pg_error(&e)))?;
    let conn = tokio::spawn(conn);
    let rows = client.simple_query(query).await.map_err(|e| format!("query failed: {}", pg_error(&e)));
    drop(client);
    let _ = conn.await;
    let first = rows?.into_iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_string)),
        _ => None,
    });
    Ok(first.flatten())
}

/// The newest `bascule.heartbeat` row the agent wrote into this database.
pub async fn newest_heartbeat(dsn: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    let v = first_value(dsn, "SELECT (extract(epoch FROM max(at)) * 1000000)::bigint FROM bascule.heartbeat").await?;
    let micros: i64 = v
        .ok_or("no heartbeat row: is `heartbeat:` set in the agent's configuration?")?
        .parse()
        .map_err(|e| format!("bad heartbeat time: {e}"))?;
    chrono::DateTime::from_timestamp_micros(micros).ok_or_else(|| "heartbeat time out of range".to_string())
}
