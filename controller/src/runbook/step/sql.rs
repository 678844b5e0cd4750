//! `sql`: one query; with `expect`, the first column of the first row (as
//! text) must equal it; with `save_as`, that value becomes a variable of the
//! steps after. The query is run as written: variables reach it only as bind
//! parameters (`$1`, `$2`… given by `params:`, each sent as text: cast it in
//! the query, `$1::int`). And the heartbeat probe of `verify`.
use bascule_core::postgres::Dsn;
use serde::Deserialize;
use tokio_postgres::types::{ToSql, Type};
use tokio_util::sync::CancellationToken;

use super::{Invalid, StepContext, StepError, StepOutcome};
use crate::runbook::template::DsnTemplate;
use crate::runbook::{references, Runbook};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlStep {
    pub dsn: DsnTemplate,
    pub query: String,
    /// The values of `$1`, `$2`…: `${name}` of variables (or literal text).
    #[serde(default)]
    pub params: Vec<String>,
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
        if let Some(r) = references(&self.query).first() {
            return Err(Invalid::new(
                "sql.query",
                format!("${{{r}}}: a query is run as written; write $1 where the value goes and list \"${{{r}}}\" under `params:`"),
            ));
        }
        if let Some(p) = self.params.iter().find(|p| references(p).iter().any(|r| r.starts_with("secret."))) {
            return Err(Invalid::new("sql.params", format!("{p:?}: a secret cannot be a query parameter (it could be stored or echoed)")));
        }
        Ok(())
    }

    pub fn needs(&self, sub: &dyn Fn(&str) -> String) -> super::needs::Needs {
        let mut n = super::needs::Needs::default();
        n.dsn(&self.dsn.resolve(sub).conninfo);
        n
    }

    pub fn describe(&self, sub: &dyn Fn(&str) -> String) -> String {
        let params: Vec<String> = self.params.iter().enumerate().map(|(i, p)| format!("${} = {:?}", i + 1, sub(p))).collect();
        format!(
            "{:?}{} on {}{}{}",
            self.query,
            if params.is_empty() { String::new() } else { format!(" with {}", params.join(", ")) },
            sub(&self.dsn.text),
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
        let dsn = self.dsn.resolve(&|t| ctx.sub_secrets(t));
        let params: Vec<String> = self.params.iter().map(|p| ctx.sub(p)).collect();
        let got = first_value(&dsn, &self.query, &params).await?;
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
/// Without parameters the query may hold several statements (the simple
/// protocol); with them it is one, its parameters bound as text.
async fn first_value(dsn: &Dsn, query: &str, params: &[String]) -> Result<Option<String>, String> {
    let cfg = dsn.config().map_err(|e| e.to_string())?;
    let (client, conn) = cfg.connect().await.map_err(|e| match e {
        bascule_core::postgres::ConnectError::Pg(e) => format!("cannot connect: {}", pg_error(&e)),
        e => format!("cannot connect: {e}"),
    })?;
    let first = if params.is_empty() {
        client.simple_query(query).await.map_err(|e| format!("query failed: {}", pg_error(&e))).map(|rows| {
            rows.into_iter()
                .find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_string)),
                    _ => None,
                })
                .flatten()
        })
    } else {
        let typed: Vec<(&(dyn ToSql + Sync), Type)> = params.iter().map(|p| (p as &(dyn ToSql + Sync), Type::TEXT)).collect();
        match client.query_typed(query, &typed).await {
            Ok(rows) => rows.first().map(as_text).transpose().map(Option::flatten),
            Err(e) => Err(format!("query failed: {}", pg_error(&e))),
        }
    };
    drop(client);
    let _ = conn.await;
    first
}

/// The first column of a row as PostgreSQL would print it.
fn as_text(row: &tokio_postgres::Row) -> Result<Option<String>, String> {
    let Some(col) = row.columns().first() else { return Ok(None) };
    let t = col.type_();
    let text = |r: Result<Option<String>, _>| r.map_err(|e: tokio_postgres::Error| e.to_string());
    match *t {
        Type::BOOL => text(row.try_get::<_, Option<bool>>(0).map(|v| v.map(|b| if b { "t" } else { "f" }.to_string()))),
        Type::INT2 => text(row.try_get::<_, Option<i16>>(0).map(|v| v.map(|n| n.to_string()))),
        Type::INT4 => text(row.try_get::<_, Option<i32>>(0).map(|v| v.map(|n| n.to_string()))),
        Type::INT8 => text(row.try_get::<_, Option<i64>>(0).map(|v| v.map(|n| n.to_string()))),
        Type::OID => text(row.try_get::<_, Option<u32>>(0).map(|v| v.map(|n| n.to_string()))),
        Type::FLOAT4 => text(row.try_get::<_, Option<f32>>(0).map(|v| v.map(|n| n.to_string()))),
        Type::FLOAT8 => text(row.try_get::<_, Option<f64>>(0).map(|v| v.map(|n| n.to_string()))),
        _ => match row.try_get::<_, Option<String>>(0) {
            Ok(v) => Ok(v),
            Err(_) => Err(format!("the first column is of type {t}: cast it to text in the query (…::text)")),
        },
    }
}

/// The newest `bascule.heartbeat` row the agent wrote into this database.
pub async fn newest_heartbeat(dsn: &Dsn) -> Result<chrono::DateTime<chrono::Utc>, String> {
    let v = first_value(dsn, "SELECT (extract(epoch FROM max(at)) * 1000000)::bigint FROM bascule.heartbeat", &[]).await?;
    let micros: i64 = v
        .ok_or("no heartbeat row: is `heartbeat:` set in the agent's configuration?")?
        .parse()
        .map_err(|e| format!("bad heartbeat time: {e}"))?;
    chrono::DateTime::from_timestamp_micros(micros).ok_or_else(|| "heartbeat time out of range".to_string())
}
