//! The evidence section of a report: what the yearly test attests, in one
//! place, for whoever audits it. It holds bascule's own lines (what a
//! restore, a promotion or the readiness check said: names, counts, times),
//! never what a query returned or a command printed.
use serde::{Deserialize, Serialize};

use super::ReportStep;
use crate::model::{Mode, Outcome};
use crate::state::Store;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// Production was really stopped: a failover, or a drill whose cut step
    /// (`rto: start`) ran and passed.
    pub production_stopped: bool,
    /// The step that cut production, if one did.
    pub cut_step: Option<String>,
    /// What was restored or promoted, as those steps said.
    pub recovered: Vec<String>,
    /// How it was checked: each verify step and its outcome (its findings
    /// are the RTO and RPO, and the report's steps).
    pub checked: Vec<String>,
    /// The readiness check's lines.
    pub readiness: Vec<String>,
    /// Each approval: who answered which step, when, and how.
    pub approvals: Vec<Approval>,
    /// The audit log's newest row when the report was built: anyone holding
    /// the store can check the chain up to it (`drill audit --verify`).
    pub audit_head: Option<AuditHead>,
    /// For each tenant the runbook names, how long a restore would take
    /// now (the newest projection: `snapshots`, or `serve`'s monitor).
    #[serde(default)]
    pub projected_rto: Vec<crate::projection::Projected>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    pub step: String,
    pub approved: bool,
    pub by: String,
    pub at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditHead {
    pub seq: i64,
    pub hash: String,
}

pub fn gather(
    store: &Store,
    drill: i64,
    mode: Mode,
    cut_step: Option<String>,
    steps: &[ReportStep],
    projected_rto: Vec<crate::projection::Projected>,
) -> anyhow::Result<Evidence> {
    let passed = |s: &&ReportStep| s.outcome == Outcome::Passed;
    let cut = cut_step.filter(|id| steps.iter().any(|s| &s.id == id && s.outcome == Outcome::Passed));
    let lines = |kinds: &[&str]| -> Vec<String> {
        steps.iter().filter(passed).filter(|s| kinds.contains(&s.kind.as_str())).map(|s| format!("{}: {}", s.id, s.output)).collect()
    };
    Ok(Evidence {
        production_stopped: mode == Mode::Failover || cut.is_some(),
        cut_step: cut,
        recovered: lines(&["restore", "promote"]),
        checked: steps.iter().filter(|s| s.kind == "verify").map(|s| format!("{}: {}", s.id, s.outcome)).collect(),
        readiness: steps
            .iter()
            .filter(|s| s.kind == "readiness")
            .flat_map(|s| s.output.lines().map(str::to_string).collect::<Vec<_>>())
            .filter(|l| !l.is_empty())
            .collect(),
        approvals: store.approvals(drill)?.into_iter().map(|(step, approved, by, at)| Approval { step, approved, by, at }).collect(),
        audit_head: store.audit_head()?.map(|(seq, hash)| AuditHead { seq, hash }),
        projected_rto,
    })
}
