//! One attempt of each kind of step. An attempt returns what it did (kept,
//! truncated, in the drill store and the report) or what went wrong.
mod approval;
mod http;
mod replication;
mod restore;
mod shell;
mod sql;

use super::engine::Drill;
use crate::runbook::Step;

/// What a successful attempt did.
#[derive(Debug, Default)]
pub struct Done {
    pub output: String,
    /// The recovery point found: the newest heartbeat of the recovered
    /// database (`verify: heartbeat`), the restored export's time, the last
    /// commit a point-in-time restore replayed.
    pub recovery_point: Option<chrono::DateTime<chrono::Utc>>,
    /// A variable set for later steps (`sql: save_as`).
    pub save: Option<(String, String)>,
}

impl Done {
    fn text(output: impl Into<String>) -> Done {
        Done { output: output.into(), ..Done::default() }
    }
}

/// Runs one attempt of `step`; `Err` says what went wrong.
pub async fn attempt(step: &Step, d: &Drill) -> Result<Done, String> {
    if let Some(x) = &step.shell {
        return shell::run(x, d).await.map(Done::text);
    }
    if let Some(x) = &step.sql {
        let got = sql::run(x, d).await?;
        let save = x.save_as.clone().map(|name| (name, got.clone()));
        return Ok(Done { output: got, save, ..Done::default() });
    }
    if let Some(x) = &step.http {
        return http::run(x, d).await.map(Done::text);
    }
    if let Some(x) = &step.sleep {
        tokio::time::sleep(x.duration).await;
        return Ok(Done::default());
    }
    if let Some(x) = &step.wait_replicated {
        return replication::wait(x, d).await.map(Done::text);
    }
    if let Some(x) = &step.restore {
        return restore::run(x, d).await;
    }
    if let Some(x) = &step.approval {
        return approval::run(x, step, d).await.map(Done::text);
    }
    if let Some(v) = &step.verify {
        let mut done = Done::default();
        let mut lines = Vec::new();
        if let Some(r) = &v.row_counts {
            lines.push(restore::row_counts(r, d).await?);
        }
        if let Some(q) = &v.sql {
            lines.push(format!("sql: {}", sql::run(q, d).await?));
        }
        if let Some(h) = &v.http {
            lines.push(http::run(h, d).await?);
        }
        if let Some(h) = &v.heartbeat {
            let at = sql::newest_heartbeat(&d.sub(&h.dsn)).await?;
            lines.push(format!("newest heartbeat on the recovered side: {}", at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)));
            done.recovery_point = Some(at);
        }
        done.output = lines.join("\n");
        return Ok(done);
    }
    Err(format!("step {} has no kind", step.id))
}
