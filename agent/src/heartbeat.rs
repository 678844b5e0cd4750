//! Heartbeat: every `interval`, `(now(), seq)` into `bascule.heartbeat` of
//! the source database. After a restore, the newest row says how recent the
//! recovered data is, measured from the data itself (the RPO of a drill).
use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::Agent;

pub(crate) const SETUP: &str = "CREATE SCHEMA IF NOT EXISTS bascule;
CREATE TABLE IF NOT EXISTS bascule.heartbeat (id int PRIMARY KEY, at timestamptz NOT NULL, seq bigint NOT NULL, host text NOT NULL)";
const BEAT: &str = "INSERT INTO bascule.heartbeat (id, at, seq, host) VALUES (1, now(), $1, $2)
ON CONFLICT (id) DO UPDATE SET at = excluded.at, seq = excluded.seq, host = excluded.host";

/// Beats until `cancel`; reconnects after any failure.
pub async fn run(agent: Arc<Agent>, cancel: CancellationToken) {
    let Some(cfg) = agent.config.heartbeat.as_ref() else { return };
    let host = crate::hostname();
    loop {
        let session = async {
            let mut pg = bascule_core::postgres::Connect::parse(&cfg.dsn).context("heartbeat.dsn is not a valid connection string")?;
            if let Some(p) = &cfg.password {
                pg.password(p.resolve(&agent.config_file, "heartbeat.password")?.as_bytes());
            }
            let (client, _conn) =
                pg.connect().await.map_err(|e| anyhow::anyhow!("heartbeat: {}", crate::source::cannot_connect(&e, "heartbeat")))?;
            client.batch_execute(SETUP).await?;
            let mut seq: i64 = client.query_one("SELECT coalesce(max(seq), 0) FROM bascule.heartbeat", &[]).await?.get(0);
            let beat = client.prepare(BEAT).await?;
            let mut tick = tokio::time::interval(cfg.interval);
            let mut last_switch = tokio::time::Instant::now();
            loop {
                tick.tick().await;
                seq += 1;
                client.execute(&beat, &[&seq, &host]).await?;
                if cfg.switch_wal_every.is_some_and(|every| last_switch.elapsed() >= every) {
                    client
                        .batch_execute("SELECT pg_switch_wal()")
                        .await
                        .context("heartbeat: pg_switch_wal() (grant EXECUTE on it to this user)")?;
                    last_switch = tokio::time::Instant::now();
                }
            }
            #[allow(unreachable_code)]
            Ok::<(), anyhow::Error>(())
        };
        tokio::select! {
            r = session => if let Err(e) = r {
                tracing::warn!(error = format!("{e:#}"), "Heartbeat stopped; retrying");
            },
            _ = cancel.cancelled() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(cfg.interval) => {}
            _ = cancel.cancelled() => return,
        }
    }
}
