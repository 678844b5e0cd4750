//! Running a runbook: stages in order, the steps of a stage at once (up to
//! the stage's limit), each step with its timeout, retries and backoff; a
//! critical failure stops the run and runs `on_failure` in order. Every
//! attempt and every step's end are written to the store (and its audit log)
//! as they happen, so that a drill whose controller died is resumed from the
//! step after the last one that ended (`drill resume`) or rolled back
//! (`drill abort`). A cancelled drill stops its running steps and stays
//! unfinished, for `drill resume`.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::model::{DrillStatus, Measures, Mode, Outcome};
use crate::runbook::step::{DrillContext, StepContext, StepError};
use crate::runbook::{Loaded, RtoMarker, Step};
use crate::state::StepRecord;

/// Longest output kept per attempt (the end of it).
const OUTPUT_MAX: usize = 4096;
/// A step without a timeout of its own (approvals wait for their answer).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);

/// One drill being run: its steps' context and the mode it runs in.
pub struct Drill {
    pub ctx: DrillContext,
    pub mode: Mode,
    running: Mutex<BTreeSet<String>>,
}

/// The drill was cancelled: it stays unfinished, `drill resume` continues it.
#[derive(Debug, thiserror::Error)]
#[error("drill {0} was stopped before it ended; `bascule-controller drill resume {0}` continues it")]
pub struct Interrupted(pub i64);

impl Drill {
    pub fn new(ctx: DrillContext, mode: Mode) -> Drill {
        Drill { ctx, mode, running: Mutex::new(BTreeSet::new()) }
    }

    pub fn loaded(&self) -> &Loaded {
        &self.ctx.loaded
    }

    /// Steps running now, for the progress line.
    pub fn running(&self) -> Vec<String> {
        self.running.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
    }

    fn set_running(&self, id: &str, on: bool) {
        let mut r = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if on {
            r.insert(id.to_string());
        } else {
            r.remove(id);
        }
    }
}

/// Keeps the end of a long output, on a character boundary.
fn tail(s: &str) -> String {
    let s = s.trim_end();
    if s.len() <= OUTPUT_MAX {
        return s.to_string();
    }
    let mut start = s.len() - OUTPUT_MAX;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &s[start..])
}

/// One attempt within what is left of the step's time.
async fn attempt(
    step: &Step,
    d: &Drill,
    left: Duration,
    timeout: Duration,
    cancel: &CancellationToken,
) -> Result<StepRecordPart, StepError> {
    let ctx = StepContext { drill: &d.ctx, step };
    let run = step.kind.run(&ctx, cancel.child_token());
    let result = tokio::select! {
        r = tokio::time::timeout(left, run) => r,
        _ = cancel.cancelled() => return Err(StepError::Cancelled),
    };
    let done = match result {
        Ok(r) => r?,
        Err(_) => return Err(StepError::Failed(format!("timed out after {}", humantime_serde::re::humantime::format_duration(timeout)))),
    };
    if let Some((name, value)) = &done.save {
        d.ctx.set_var(name, value).map_err(|e| StepError::Failed(format!("{e:#}")))?;
    }
    Ok(StepRecordPart { output: tail(&done.output), recovery_point: done.recovery_point })
}

/// What a passed attempt leaves in the step's record.
struct StepRecordPart {
    output: String,
    recovery_point: Option<chrono::DateTime<chrono::Utc>>,
}

/// Runs `step` with its retries and timeout; records every attempt, and the
/// step's end. A cancellation leaves the step unfinished ([`Interrupted`]).
async fn run_step(step: &Step, stage: &str, d: &Drill, cancel: &CancellationToken) -> anyhow::Result<StepRecord> {
    d.set_running(&step.id, true);
    let started = chrono::Utc::now();
    let t0 = Instant::now();
    // an approval waits for its answer, and its own timeout says what then
    let timeout = match (&step.kind, step.timeout) {
        (crate::runbook::StepKind::Approval(_), _) => Duration::MAX,
        (_, t) => t.unwrap_or(DEFAULT_TIMEOUT),
    };
    let mut backoff = step.backoff;
    // a resumed step counts its attempts on from those of the dead controller
    let before = d.ctx.store().attempt_count(d.ctx.id, &step.id)?;
    let mut n = 0;
    let mut recovery_point = None;
    let (outcome, output) = loop {
        n += 1;
        // with a shared state, nothing runs once another replica took the drill over
        d.ctx.store().check_held()?;
        let at = chrono::Utc::now();
        let result = attempt(step, d, timeout.saturating_sub(t0.elapsed()), timeout, cancel).await;
        let (ok, out) = match result {
            Ok(part) => {
                recovery_point = part.recovery_point;
                (true, part.output)
            }
            Err(StepError::Cancelled) => {
                d.ctx.store().record_attempt(d.ctx.id, &step.id, before + n, at, false, "cancelled")?;
                d.set_running(&step.id, false);
                return Err(Interrupted(d.ctx.id).into());
            }
            Err(StepError::Failed(e)) => (false, tail(&e)),
        };
        // nothing recorded, shown, logged or published holds a secret
        let out = d.ctx.redact(&out);
        d.ctx.store().record_attempt(d.ctx.id, &step.id, before + n, at, ok, &out)?;
        if ok {
            break (Outcome::Passed, out);
        }
        if n > step.retries || t0.elapsed() + backoff >= timeout {
            break (if step.critical { Outcome::Failed } else { Outcome::Tolerated }, out);
        }
        tracing::warn!(step = %step.id, attempt = n, error = %out, retry_in = ?backoff, "Step failed; retrying");
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = cancel.cancelled() => {
                d.set_running(&step.id, false);
                return Err(Interrupted(d.ctx.id).into());
            }
        }
        backoff *= 2;
    };
    d.set_running(&step.id, false);
    let r = StepRecord {
        id: step.id.clone(),
        stage: stage.into(),
        kind: step.kind().into(),
        started,
        finished: chrono::Utc::now(),
        attempts: n,
        outcome,
        output,
        recovery_point,
    };
    d.ctx.store().finish_step(d.ctx.id, &d.ctx.actor, &r)?;
    tracing::info!(step = %r.id, outcome = %r.outcome, attempts = r.attempts, seconds = r.elapsed().as_secs_f64(), "Step finished");
    Ok(r)
}

fn skipped(s: &Step, stage: &str) -> StepRecord {
    let now = chrono::Utc::now();
    StepRecord {
        id: s.id.clone(),
        stage: stage.into(),
        kind: s.kind().into(),
        started: now,
        finished: now,
        attempts: 0,
        outcome: Outcome::Skipped,
        output: String::new(),
        recovery_point: None,
    }
}

/// How a drill ended.
#[derive(Debug)]
pub struct Ending {
    pub status: DrillStatus,
    pub measures: Measures,
}

/// Runs the drill's steps that have not ended yet (all of them for a new
/// drill), then the rollback if a critical step failed. `abort`: run only
/// the rollback.
pub async fn run(d: &Drill, abort: bool, cancel: &CancellationToken) -> anyhow::Result<Ending> {
    let (id, loaded) = (d.ctx.id, d.loaded());
    let done: BTreeMap<String, StepRecord> = d.ctx.store().steps(id)?.into_iter().map(|r| (r.id.clone(), r)).collect();
    let mut failed = abort || done.values().any(|r| r.outcome == Outcome::Failed && r.stage != "on_failure");
    if !abort {
        for stage in &loaded.runbook.stages {
            let parallel = stage.parallel.unwrap_or(loaded.runbook.parallel);
            let todo: Vec<&Step> = stage.steps.iter().filter(|s| s.modes.contains(&d.mode) && !done.contains_key(&s.id)).collect();
            if todo.is_empty() {
                continue;
            }
            if failed {
                for s in todo {
                    d.ctx.store().finish_step(id, &d.ctx.actor, &skipped(s, &stage.name))?;
                }
                continue;
            }
            tracing::info!(stage = %stage.name, steps = todo.len(), "Stage");
            let steps: Vec<_> = todo.into_iter().map(|s| run_step(s, &stage.name, d, cancel)).collect();
            let results: Vec<anyhow::Result<StepRecord>> = futures::stream::iter(steps).buffer_unordered(parallel).collect().await;
            for r in results {
                failed |= r?.outcome == Outcome::Failed;
            }
        }
    }
    if failed {
        d.ctx.store().set_status(id, &d.ctx.actor, DrillStatus::RollingBack)?;
        for s in loaded.runbook.on_failure.iter().filter(|s| s.modes.contains(&d.mode) && !done.contains_key(&s.id)) {
            run_step(s, "on_failure", d, cancel).await?;
        }
    }
    let steps = d.ctx.store().steps(id)?;
    let measures = measure(loaded, &steps);
    let status = if abort {
        DrillStatus::Aborted
    } else if failed {
        DrillStatus::Failed
    } else {
        DrillStatus::Passed
    };
    d.ctx.store().finish_drill(id, &d.ctx.actor, status, &measures)?;
    Ok(Ending { status, measures })
}

/// RTO: from the start of the `rto: start` step (default: the first step
/// that ran) to the end of the `rto: end` step (default: the last one), when
/// both passed. RPO: the cut-over instant (the start of the `rto: start`
/// step) minus the recovery point: the newest heartbeat a `verify: heartbeat`
/// step found on the recovered side, else the restored export's time or the
/// last transaction a point-in-time restore replayed.
pub fn measure(l: &Loaded, steps: &[StepRecord]) -> Measures {
    let marked = |m: RtoMarker| l.steps().into_iter().find(|(_, s)| s.rto == Some(m)).map(|(_, s)| s.id.clone());
    let ran: Vec<&StepRecord> = steps.iter().filter(|s| s.outcome != Outcome::Skipped && s.stage != "on_failure").collect();
    let by_id = |id: Option<String>| id.and_then(|id| ran.iter().find(|s| s.id == id).copied());
    // a start step of the other mode only (stopping a primary that a real
    // failover finds already gone): the clock starts with the first step
    let start = marked(RtoMarker::Start).and_then(|id| by_id(Some(id))).or_else(|| ran.iter().min_by_key(|s| s.started).copied());
    let end = match marked(RtoMarker::End) {
        Some(id) => by_id(Some(id)),
        None => ran.iter().max_by_key(|s| s.finished).copied(),
    };
    let mut m = Measures::default();
    if let Some(s) = start {
        m.cut = Some(s.started);
    }
    if let (Some(s), Some(e)) = (start, end) {
        if e.outcome == Outcome::Passed {
            m.rto = (e.finished - s.started).to_std().ok();
        }
    }
    let passed = || ran.iter().filter(|s| s.outcome == Outcome::Passed);
    m.recovery_point = passed()
        .filter(|s| s.kind == "verify")
        .filter_map(|s| s.recovery_point)
        .max()
        .or_else(|| passed().filter_map(|s| s.recovery_point).max());
    if let (Some(cut), Some(rp)) = (m.cut, m.recovery_point) {
        m.rpo = Some((cut - rp).to_std().unwrap_or_default());
    }
    m
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::state::{NewDrill, Store};

    const RUNBOOK: &str = "name: t
stages:
  - name: wait
    steps:
      - id: first
        sleep: { duration: 10ms }
      - id: long
        sleep: { duration: 1h }
";

    fn drill(dir: &std::path::Path) -> Drill {
        let loaded = Arc::new(crate::runbook::parse(RUNBOOK, std::path::Path::new("rb.yaml")).unwrap());
        let mut store = Store::open(&dir.join("drills.sqlite")).unwrap();
        let id = store
            .create_drill(&NewDrill {
                runbook: "t",
                runbook_file: std::path::Path::new("rb.yaml"),
                runbook_hash: &loaded.hash,
                mode: Mode::Drill,
                started_by: "test",
                host: "here",
                rto_target: Duration::from_secs(60),
                rpo_target: None,
            })
            .unwrap();
        let ctx = DrillContext::new(id, loaded, "test".into(), None, Arc::new(Mutex::new(store)), Vec::new()).unwrap();
        Drill::new(ctx, Mode::Drill)
    }

    #[tokio::test]
    async fn a_cancelled_drill_stops_its_running_step_and_stays_unfinished() {
        let dir = tempfile::tempdir().unwrap();
        let d = drill(dir.path());
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            c.cancel();
        });
        let t0 = Instant::now();
        let err = run(&d, false, &cancel).await.unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(5), "the hour-long step was stopped: {:?}", t0.elapsed());
        assert!(err.downcast_ref::<Interrupted>().is_some(), "{err:#}");
        let store = d.ctx.store();
        let row = store.drill(d.ctx.id).unwrap();
        assert!(!row.finished(), "a cancelled drill is left for `drill resume`");
        let steps = store.steps(d.ctx.id).unwrap();
        assert_eq!(steps.iter().map(|s| (s.id.as_str(), s.outcome)).collect::<Vec<_>>(), [("first", Outcome::Passed)]);
        assert_eq!(store.attempts(d.ctx.id, "long").unwrap(), [(1, "failed".to_string())], "the stopped attempt is recorded");
    }
}
