//! Running a runbook: stages in order, the steps of a stage at once (up to
//! the stage's limit), each step with its timeout, retries and backoff; a
//! critical failure stops the run and runs `on_failure` in order. Every
//! attempt and every step's end are written to the store (and its audit log)
//! as they happen, so that a drill whose controller died is resumed from the
//! step after the last one that ended (`drill resume`) or rolled back
//! (`drill abort`).
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::step;
use super::store::{Measures, StepRecord, Store};
use crate::config::ControllerConfig;
use crate::runbook::{substitute, Loaded, Mode, RtoMarker, Step};

/// Longest output kept per attempt (the end of it).
const OUTPUT_MAX: usize = 4096;
/// A step without a timeout of its own (approvals wait for their answer).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);

pub const PASSED: &str = "passed";
pub const FAILED: &str = "failed";
pub const TOLERATED: &str = "failed (not critical)";
pub const SKIPPED: &str = "skipped";

/// One drill being run: the runbook, where its state goes, and what its
/// steps need.
pub struct Drill {
    pub loaded: Arc<Loaded>,
    pub mode: Mode,
    pub id: i64,
    pub store: Arc<Mutex<Store>>,
    /// Who runs it (`user@host`), for the audit log.
    pub actor: String,
    /// The controller's configuration and its file, for steps that reach
    /// the providers.
    pub controller: Option<(Arc<ControllerConfig>, PathBuf)>,
    /// Approvals may be answered at this terminal.
    pub interactive: bool,
    vars: Mutex<BTreeMap<String, String>>,
    running: Mutex<BTreeSet<String>>,
}

impl Drill {
    /// `overrides` are `--var` values, or those stored for a resumed drill.
    pub fn new(
        loaded: Arc<Loaded>,
        mode: Mode,
        id: i64,
        store: Arc<Mutex<Store>>,
        actor: String,
        controller: Option<(Arc<ControllerConfig>, PathBuf)>,
    ) -> anyhow::Result<Drill> {
        let mut vars = loaded.runbook.variables.clone();
        vars.extend(store.lock().expect("lock").variables(id)?);
        Ok(Drill {
            loaded,
            mode,
            id,
            store,
            actor,
            controller,
            interactive: false,
            vars: Mutex::new(vars),
            running: Mutex::new(BTreeSet::new()),
        })
    }

    /// Variables and secrets substituted into `s`.
    pub fn sub(&self, s: &str) -> String {
        let l = &self.loaded;
        let secret = |name: &str| l.runbook.secrets.get(name).and_then(|s| s.resolve(&l.file, name).ok()).unwrap_or_default();
        substitute(s, &self.vars.lock().expect("lock"), &secret)
    }

    pub fn controller(&self) -> Result<(&ControllerConfig, &std::path::Path), String> {
        self.controller
            .as_ref()
            .map(|(c, f)| (c.as_ref(), f.as_path()))
            .ok_or_else(|| "this step needs the controller's configuration (--config)".to_string())
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().expect("lock")
    }

    pub fn answer(&self, step: &str, approved: bool) {
        if let Err(e) = self.store().answer(self.id, step, approved, &self.actor) {
            tracing::error!(error = format!("{e:#}"), "Cannot record the answer");
        }
    }

    pub fn approval(&self, step: &str) -> Result<Option<(bool, String)>, String> {
        self.store().approval(self.id, step).map_err(|e| format!("{e:#}"))
    }

    /// Steps running now, for the progress line.
    pub fn running(&self) -> Vec<String> {
        self.running.lock().expect("lock").iter().cloned().collect()
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

/// Runs `step` with its retries and timeout; records every attempt, and the
/// step's end.
async fn run_step(step: &Step, stage: &str, d: &Drill) -> anyhow::Result<StepRecord> {
    d.running.lock().expect("lock").insert(step.id.clone());
    let started = chrono::Utc::now();
    let t0 = Instant::now();
    // an approval waits for its answer, and its own timeout says what then
    let timeout = match (&step.approval, step.timeout) {
        (Some(_), _) => Duration::MAX,
        (None, t) => t.unwrap_or(DEFAULT_TIMEOUT),
    };
    let mut backoff = step.backoff;
    // a resumed step counts its attempts on from those of the dead controller
    let before = d.store().attempt_count(d.id, &step.id)?;
    let mut n = 0;
    let mut recovery_point = None;
    let (outcome, output) = loop {
        n += 1;
        let at = chrono::Utc::now();
        let left = timeout.saturating_sub(t0.elapsed());
        let result = match tokio::time::timeout(left, step::attempt(step, d)).await {
            Ok(r) => r,
            Err(_) => Err(format!("timed out after {}", humantime_serde::re::humantime::format_duration(timeout))),
        };
        let (ok, out) = match result {
            Ok(done) => {
                recovery_point = done.recovery_point;
                if let Some((name, value)) = &done.save {
                    d.vars.lock().expect("lock").insert(name.clone(), value.clone());
                    d.store().set_variable(d.id, name, value)?;
                }
                (true, tail(&done.output))
            }
            Err(e) => (false, tail(&e)),
        };
        d.store().record_attempt(d.id, &step.id, before + n, at, ok, &out)?;
        if ok {
            break (PASSED, out);
        }
        if n > step.retries || t0.elapsed() + backoff >= timeout {
            break (if step.critical { FAILED } else { TOLERATED }, out);
        }
        tracing::warn!(step = %step.id, attempt = n, error = %out, retry_in = ?backoff, "Step failed; retrying");
        tokio::time::sleep(backoff).await;
        backoff *= 2;
    };
    d.running.lock().expect("lock").remove(&step.id);
    let r = StepRecord {
        id: step.id.clone(),
        stage: stage.into(),
        kind: step.kind().into(),
        started,
        finished: chrono::Utc::now(),
        attempts: n,
        outcome: outcome.into(),
        output,
        recovery_point,
    };
    d.store().finish_step(d.id, &d.actor, &r)?;
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
        outcome: SKIPPED.into(),
        output: String::new(),
        recovery_point: None,
    }
}

/// How a drill ended.
#[derive(Debug)]
pub struct Ending {
    /// `passed`, `failed` or `aborted`.
    pub status: &'static str,
    pub measures: Measures,
}

/// Runs the drill's steps that have not ended yet (all of them for a new
/// drill), then the rollback if a critical step failed. `abort`: run only
/// the rollback.
pub async fn run(d: &Drill, abort: bool) -> anyhow::Result<Ending> {
    let done: BTreeMap<String, StepRecord> = d.store().steps(d.id)?.into_iter().map(|r| (r.id.clone(), r)).collect();
    let mut failed = abort || done.values().any(|r| r.outcome == FAILED && r.stage != "on_failure");
    if !abort {
        for stage in &d.loaded.runbook.stages {
            let parallel = stage.parallel.unwrap_or(d.loaded.runbook.parallel);
            let todo: Vec<&Step> = stage.steps.iter().filter(|s| s.modes.contains(&d.mode) && !done.contains_key(&s.id)).collect();
            if todo.is_empty() {
                continue;
            }
            if failed {
                for s in todo {
                    d.store().finish_step(d.id, &d.actor, &skipped(s, &stage.name))?;
                }
                continue;
            }
            tracing::info!(stage = %stage.name, steps = todo.len(), "Stage");
            let steps: Vec<_> = todo.into_iter().map(|s| run_step(s, &stage.name, d)).collect();
            let results: Vec<anyhow::Result<StepRecord>> = futures::stream::iter(steps).buffer_unordered(parallel).collect().await;
            for r in results {
                failed |= r?.outcome == FAILED;
            }
        }
    }
    if failed {
        d.store().set_status(d.id, &d.actor, "rolling-back")?;
        for s in d.loaded.runbook.on_failure.iter().filter(|s| s.modes.contains(&d.mode) && !done.contains_key(&s.id)) {
            run_step(s, "on_failure", d).await?;
        }
    }
    let steps = d.store().steps(d.id)?;
    let measures = measure(&d.loaded, &steps);
    let status = if abort {
        "aborted"
    } else if failed {
        FAILED
    } else {
        PASSED
    };
    d.store().finish_drill(d.id, &d.actor, status, &measures)?;
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
    let ran: Vec<&StepRecord> = steps.iter().filter(|s| s.outcome != SKIPPED && s.stage != "on_failure").collect();
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
        if e.outcome == PASSED {
            m.rto = (e.finished - s.started).to_std().ok();
        }
    }
    let passed = || ran.iter().filter(|s| s.outcome == PASSED);
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

/// Prints the elapsed time against the RTO target while the drill runs: a
/// line kept up to date on a terminal, a log line every 30 s otherwise.
pub fn show_progress(d: Arc<Drill>) -> tokio::task::JoinHandle<()> {
    use std::io::{IsTerminal, Write};
    let target = d.loaded.runbook.targets.rto;
    tokio::spawn(async move {
        let t0 = Instant::now();
        let tty = std::io::stderr().is_terminal();
        let mut last_log = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let e = t0.elapsed();
            let line = format!(
                "drill {} {}: {} elapsed of the {} RTO target ({:.1} %); running: {}",
                d.id,
                d.loaded.runbook.name,
                hms(e),
                hms(target),
                100.0 * e.as_secs_f64() / target.as_secs_f64(),
                d.running().join(", ")
            );
            if tty {
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r\x1b[2K{line}");
                let _ = err.flush();
            } else if last_log.elapsed() >= Duration::from_secs(30) {
                tracing::info!("{line}");
                last_log = Instant::now();
            }
        }
    })
}

/// `1:02:03`.
pub fn hms(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}
