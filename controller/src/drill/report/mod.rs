//! Drill reports: the model, built from the drill store, with the verdict
//! and RTO and RPO against their targets; shown as [`markdown`] and one
//! self-contained [`html`] page; signed JSON [`publish`]ed on both providers.
pub mod evidence;
pub mod html;
pub mod markdown;
mod publish;

use std::fmt::Write;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use publish::publish;

use super::progress::hms;
use crate::model::{DrillStatus, Mode, Outcome};
use crate::state::{DrillRow, Store};

/// `PASS` only when every critical step passed and RTO and RPO are
/// measured and within their targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    Pass,
    Fail,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub format: u32,
    pub drill: i64,
    pub runbook: String,
    pub runbook_file: String,
    pub runbook_sha: String,
    pub mode: Mode,
    pub started_by: String,
    pub host: String,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    pub status: DrillStatus,
    /// `PASS` only when every critical step passed and RTO and RPO are
    /// measured and within their targets.
    pub verdict: Verdict,
    /// Why the verdict is not PASS.
    pub reasons: Vec<String>,
    pub rto: Measure,
    pub rpo: Measure,
    /// The cut-over instant, and the newest data found on the recovered side.
    pub cut_at: Option<chrono::DateTime<chrono::Utc>>,
    pub recovery_point: Option<chrono::DateTime<chrono::Utc>>,
    pub steps: Vec<ReportStep>,
    /// What the test attests, in one place.
    #[serde(default)]
    pub evidence: Option<evidence::Evidence>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measure {
    pub measured_seconds: Option<f64>,
    pub target_seconds: Option<f64>,
    pub met: Option<bool>,
}

impl Measure {
    fn new(measured: Option<Duration>, target: Option<Duration>) -> Measure {
        let met = match (measured, target) {
            (Some(m), Some(t)) => Some(m <= t),
            _ => None,
        };
        Measure { measured_seconds: measured.map(|d| d.as_secs_f64()), target_seconds: target.map(|d| d.as_secs_f64()), met }
    }

    /// `12.3 s against 4:00:00: met`.
    pub fn describe(&self) -> String {
        let m = self.measured_seconds.map(secs).unwrap_or("not measured".into());
        match (self.target_seconds, self.met) {
            (Some(t), Some(met)) => {
                format!("{m} against the {} target: {}", hms(Duration::from_secs_f64(t)), if met { "met" } else { "MISSED" })
            }
            (Some(t), None) => format!("{m} (target {})", hms(Duration::from_secs_f64(t))),
            (None, _) => format!("{m} (no target)"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportStep {
    pub id: String,
    pub stage: String,
    pub kind: String,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: chrono::DateTime<chrono::Utc>,
    pub duration_seconds: f64,
    pub attempts: u32,
    pub outcome: Outcome,
    /// What the step printed or said (secrets redacted). Kept at the
    /// controller: the copy on the providers has only its digest.
    pub output: String,
    /// BLAKE3 of the output, in place of it, in the copy on the providers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_blake3: Option<String>,
}

/// The report of drill `id`, from the store.
pub fn build(store: &Store, id: i64) -> anyhow::Result<Report> {
    let d = store.drill(id)?;
    let steps: Vec<ReportStep> = store
        .steps(id)?
        .into_iter()
        .map(|s| ReportStep {
            duration_seconds: s.elapsed().as_secs_f64(),
            id: s.id,
            stage: s.stage,
            kind: s.kind,
            started_at: s.started,
            finished_at: s.finished,
            attempts: s.attempts,
            outcome: s.outcome,
            output: s.output,
            output_blake3: None,
        })
        .collect();
    let (rto, rpo, reasons) = judge(&d);
    // the runbook as it ran (the same hash): which step cut production, which tenants it restores
    let ran = crate::runbook::load(std::path::Path::new(&d.runbook_file)).ok().filter(|l| l.hash == d.runbook_hash);
    let cut_step = ran.as_ref().and_then(|l| {
        l.steps().into_iter().find(|(_, s)| s.rto == Some(crate::runbook::step::RtoMarker::Start)).map(|(_, s)| s.id.clone())
    });
    let projected = match (&ran, Some(store.state_dir())) {
        (Some(l), Some(state_dir)) => {
            let vars: std::collections::BTreeMap<String, String> = store.variables(d.id)?.into_iter().collect();
            let mut values = l.defaults();
            values.extend(vars);
            let needs = crate::drill::readiness::needs(l, &values, d.mode);
            needs.tenants.iter().filter_map(|t| crate::projection::kept(state_dir, t)).collect()
        }
        _ => Vec::new(),
    };
    let evidence = evidence::gather(store, d.id, d.mode, cut_step, &steps, projected)?;
    Ok(Report {
        format: 1,
        drill: d.id,
        runbook: d.runbook,
        runbook_file: d.runbook_file,
        runbook_sha: d.runbook_hash,
        mode: d.mode,
        started_by: d.started_by,
        host: d.host,
        started_at: d.started_at,
        finished_at: d.finished_at,
        status: d.status,
        verdict: if reasons.is_empty() { Verdict::Pass } else { Verdict::Fail },
        reasons,
        rto,
        rpo,
        cut_at: d.measures.cut,
        recovery_point: d.measures.recovery_point,
        steps,
        evidence: Some(evidence),
    })
}

/// RTO and RPO against their targets, and why the verdict is not PASS (empty: PASS).
pub fn judge(d: &DrillRow) -> (Measure, Measure, Vec<String>) {
    let rto = Measure::new(d.measures.rto, Some(d.rto_target));
    let rpo = Measure::new(d.measures.rpo, d.rpo_target);
    let mut reasons = Vec::new();
    match d.status {
        DrillStatus::Passed => {}
        DrillStatus::Failed => reasons.push("a critical step failed".to_string()),
        DrillStatus::Aborted => reasons.push("the drill was aborted".to_string()),
        other @ (DrillStatus::Running | DrillStatus::RollingBack) => reasons.push(format!("the drill has not finished ({other})")),
    }
    match rto.met {
        Some(false) => reasons.push("RTO above its target".into()),
        None if d.status == DrillStatus::Passed => reasons.push("RTO not measured".into()),
        _ => {}
    }
    match (rpo.met, rpo.target_seconds) {
        (Some(false), _) => reasons.push("RPO above its target".into()),
        (None, Some(_)) if d.status == DrillStatus::Passed => reasons.push("RPO not measured (no recovery point found)".into()),
        _ => {}
    }
    (rto, rpo, reasons)
}

impl Report {
    /// The copy for the providers: outcomes, times and measures, and of
    /// each step's output only its digest (an output may quote the
    /// customer's rows, a PostgreSQL error their values).
    pub fn for_providers(&self) -> Report {
        let mut r = self.clone();
        for s in &mut r.steps {
            if !s.output.is_empty() {
                s.output_blake3 = Some(bascule_core::hash_hex(s.output.as_bytes()));
                s.output.clear();
            }
        }
        r
    }

    pub fn passed(&self) -> bool {
        self.verdict == Verdict::Pass
    }

    /// The object key on the providers.
    pub fn key(&self) -> String {
        format!("drills/{}/{}-drill-{}.json", self.runbook, self.started_at.format("%Y%m%dT%H%M%SZ"), self.drill)
    }

    /// The summary printed at the end of a drill.
    pub fn summary(&self) -> String {
        let mut out = format!("drill {} ({}, {} mode): {}", self.drill, self.runbook, self.mode, self.verdict);
        if !self.reasons.is_empty() {
            let _ = write!(out, " — {}", self.reasons.join("; "));
        }
        let _ = write!(out, "\n  RTO {}\n  RPO {}", self.rto.describe(), self.rpo.describe());
        out
    }
}

impl bascule_core::signed::Signed for Report {
    const KIND: bascule_core::signed::Kind = bascule_core::signed::Kind::Report;
    const MAX_LEN: u64 = 16 << 20;

    fn signed_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.started_at
    }

    /// Reports live under the controller's own prefix.
    fn tenant(&self) -> &str {
        crate::context::REPORTS
    }

    fn stored_at(&self) -> Option<String> {
        Some(self.key())
    }
}

/// A duration as a report shows it: seconds under two minutes, else `h:mm:ss`.
pub(crate) fn secs(s: f64) -> String {
    if s < 120.0 {
        format!("{s:.1} s")
    } else {
        hms(Duration::from_secs_f64(s))
    }
}

pub(crate) fn ts(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string()
}
