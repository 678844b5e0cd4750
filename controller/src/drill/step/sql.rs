//! `sql`: one query; with `expect`, the first column of the first row (as
//! text) must equal it. And the heartbeat probe of `verify`.
use super::Drill;
use crate::runbook::SqlStep;

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

pub async fn run(q: &SqlStep, d: &Drill) -> Result<String, String> {
    let got = first_value(&d.sub(&q.dsn), &d.sub(&q.query)).await?;
    match &q.expect {
        Some(want) if got.as_deref() != Some(want.as_str()) => {
            Err(format!("expected {want:?}, got {}", got.map(|g| format!("{g:?}")).unwrap_or("no row".into())))
        }
        _ => Ok(got.unwrap_or_default()),
    }
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
