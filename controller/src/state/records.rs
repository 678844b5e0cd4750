//! What the drill store holds, as the rest of the controller reads it.
use super::db::Row;
use crate::model::{DrillStatus, Measures, Mode, Outcome};

pub(super) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub(super) fn parse_time(s: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&chrono::Utc)).unwrap_or_default()
}

/// A drill as stored.
#[derive(Debug, Clone)]
pub struct DrillRow {
    pub id: i64,
    pub runbook: String,
    pub runbook_file: String,
    pub runbook_hash: String,
    pub mode: Mode,
    pub started_by: String,
    pub host: String,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    pub status: DrillStatus,
    pub rto_target: std::time::Duration,
    pub rpo_target: Option<std::time::Duration>,
    pub measures: Measures,
}

pub(super) const DRILL_COLUMNS: &str = "id, runbook, runbook_file, runbook_hash, mode, started_by, host, started_at, finished_at, status,
     rto_target_ms, rpo_target_ms, rto_ms, rpo_ms, cut_at, recovery_point";

impl DrillRow {
    pub(super) fn from_row(r: &Row) -> anyhow::Result<DrillRow> {
        let ms = |v: Option<i64>| v.map(|v| std::time::Duration::from_millis(v.max(0) as u64));
        Ok(DrillRow {
            id: r.int(0)?,
            runbook: r.text(1)?,
            runbook_file: r.text(2)?,
            runbook_hash: r.text(3)?,
            mode: r.word(4)?,
            started_by: r.text(5)?,
            host: r.text(6)?,
            started_at: parse_time(&r.text(7)?),
            finished_at: r.opt_text(8)?.map(|t| parse_time(&t)),
            status: r.word(9)?,
            rto_target: ms(r.opt_int(10)?).unwrap_or_default(),
            rpo_target: ms(r.opt_int(11)?),
            measures: Measures {
                rto: ms(r.opt_int(12)?),
                rpo: ms(r.opt_int(13)?),
                cut: r.opt_text(14)?.map(|t| parse_time(&t)),
                recovery_point: r.opt_text(15)?.map(|t| parse_time(&t)),
            },
        })
    }

    /// Whether the drill is over.
    pub fn finished(&self) -> bool {
        self.finished_at.is_some()
    }
}

/// A new drill: what the store records when it starts.
#[derive(Debug, Clone)]
pub struct NewDrill<'a> {
    pub runbook: &'a str,
    pub runbook_file: &'a std::path::Path,
    pub runbook_hash: &'a str,
    pub mode: Mode,
    pub started_by: &'a str,
    pub host: &'a str,
    pub rto_target: std::time::Duration,
    pub rpo_target: Option<std::time::Duration>,
}

/// A step that ended.
#[derive(Debug, Clone)]
pub struct StepRecord {
    pub id: String,
    /// The stage's name, or `on_failure`.
    pub stage: String,
    pub kind: String,
    pub started: chrono::DateTime<chrono::Utc>,
    pub finished: chrono::DateTime<chrono::Utc>,
    pub attempts: u32,
    pub outcome: Outcome,
    pub output: String,
    /// The recovery point a step found: the newest heartbeat (`verify:
    /// heartbeat`), the restored export's time, the last replayed commit.
    pub recovery_point: Option<chrono::DateTime<chrono::Utc>>,
}

impl StepRecord {
    pub fn elapsed(&self) -> std::time::Duration {
        (self.finished - self.started).to_std().unwrap_or_default()
    }
}
