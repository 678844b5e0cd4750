//! Running a runbook: stages in order, the steps of a stage at once (up to
//! the stage's limit), each step with its timeout, retries and backoff; a
//! critical failure stops the run and runs `on_failure` in order. Every
//! attempt and every step's end are written to the store (and its audit log)
//! as they happen.
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::store::Store;
use crate::runbook::{substitute, Loaded, Mode, RtoMarker, Step};

/// Longest output kept per attempt (the end of it).
const OUTPUT_MAX: usize = 4096;
/// A step without a timeout of its own.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Failed,
    /// Failed, but not critical: the run goes on.
    Tolerated,
    Skipped,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::Failed => "failed",
            Outcome::Tolerated => "failed (not critical)",
            Outcome::Skipped => "skipped",
        }
    }
}

#[derive(Debug, Clone)]
pub struct StepResult {
    pub id: String,
    pub kind: &'static str,
    pub stage: String,
    pub started: chrono::DateTime<chrono::Utc>,
    pub elapsed: Duration,
    pub attempts: u32,
    pub outcome: Outcome,
    pub output: String,
}

#[derive(Debug)]
pub struct RunReport {
    pub drill: i64,
    pub passed: bool,
    pub steps: Vec<StepResult>,
    pub rollback: Vec<StepResult>,
    pub rto: Option<Duration>,
    pub total: Duration,
}

/// Keeps the end of a long output, on a character boundary.
fn tail(s: &str) -> String {
    if s.len() <= OUTPUT_MAX {
        return s.to_string();
    }
    let mut start = s.len() - OUTPUT_MAX;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &s[start..])
}

/// One attempt of a step; `Err` carries what went wrong.
async fn attempt(step: &Step, l: &Loaded, secrets: &dyn Fn(&str) -> String) -> Result<String, String> {
    let sub = |t: &str| substitute(t, &l.runbook.variables, secrets);
    if let Some(sh) = &step.shell {
        let mut c = tokio::process::Command::new("sh");
        c.arg("-c").arg(sub(&sh.command)).kill_on_drop(true).stdin(std::process::Stdio::null());
        for (k, v) in &sh.env {
            c.env(k, sub(v));
        }
        if let Some(d) = &sh.dir {
            c.current_dir(sub(&d.to_string_lossy()));
        }
        let out = c.output().await.map_err(|e| format!("cannot run sh: {e}"))?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        return if out.status.success() { Ok(text) } else { Err(format!("{} — {}", out.status, text.trim())) };
    }
    if let Some(q) = &step.sql {
        return sql(q, &sub).await;
    }
    if let Some(h) = &step.http {
        return http(h, &sub).await;
    }
    if let Some(z) = &step.sleep {
        tokio::time::sleep(z.duration).await;
        return Ok(String::new());
    }
    Err(format!("step kind {} cannot run yet", step.kind()))
}

/// Runs the query; with `expect`, the first column of the first row (as
/// text) must equal it.
async fn sql(q: &crate::runbook::SqlStep, sub: &dyn Fn(&str) -> String) -> Result<String, String> {
    let cfg: tokio_postgres::Config = sub(&q.dsn).parse().map_err(|e| format!("bad dsn: {e}"))?;
    let (client, conn) = cfg.connect(tokio_postgres::NoTls).await.map_err(|e| format!("cannot connect: {e}"))?;
    let conn = tokio::spawn(conn);
    let rows = client.simple_query(&sub(&q.query)).await.map_err(|e| format!("query failed: {e}"));
    drop(client);
    let _ = conn.await;
    let first = rows?.into_iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_string)),
        _ => None,
    });
    let got = first.flatten();
    match &q.expect {
        Some(want) if got.as_deref() != Some(want.as_str()) => {
            Err(format!("expected {want:?}, got {}", got.map(|g| format!("{g:?}")).unwrap_or("no row".into())))
        }
        _ => Ok(got.unwrap_or_default()),
    }
}

/// One request; the status (and, if asked, a text in the body) must match.
async fn http(h: &crate::runbook::HttpStep, sub: &dyn Fn(&str) -> String) -> Result<String, String> {
    let method = reqwest::Method::from_bytes(h.method.to_uppercase().as_bytes()).map_err(|_| format!("bad method {:?}", h.method))?;
    let mut req = reqwest::Client::new().request(method, sub(&h.url));
    for (k, v) in &h.headers {
        req = req.header(k, sub(v));
    }
    if let Some(b) = &h.body {
        req = req.body(sub(b));
    }
    let resp = req.send().await.map_err(|e| format!("request failed: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    if status != h.status {
        return Err(format!("status {status}, expected {}: {}", h.status, body.chars().take(300).collect::<String>()));
    }
    if let Some(want) = &h.body_contains {
        if !body.contains(want.as_str()) {
            return Err(format!("the body does not contain {want:?}"));
        }
    }
    Ok(format!("status {status}"))
}

/// Steps whose kind this engine cannot run yet, as `id (kind)`: a runbook
/// with any is refused before anything runs.
pub fn unsupported(l: &Loaded) -> Vec<String> {
    l.steps()
        .into_iter()
        .filter(|(_, s)| !matches!(s.kind(), "shell" | "sleep" | "sql" | "http"))
        .map(|(_, s)| format!("{} ({})", s.id, s.kind()))
        .collect()
}

/// Runs `step` with its retries and timeout; records every attempt.
async fn run_step(step: &Step, stage: &str, l: &Loaded, drill: i64, store: &Mutex<Store>, secrets: &dyn Fn(&str) -> String) -> StepResult {
    let started = chrono::Utc::now();
    let t0 = Instant::now();
    let timeout = step.timeout.unwrap_or(DEFAULT_TIMEOUT);
    let mut backoff = step.backoff;
    let mut n = 0;
    let (outcome, output) = loop {
        n += 1;
        let at = chrono::Utc::now();
        let left = timeout.saturating_sub(t0.elapsed());
        let result = match tokio::time::timeout(left, attempt(step, l, secrets)).await {
            Ok(r) => r,
            Err(_) => Err(format!("timed out after {}", humantime_serde::re::humantime::format_duration(timeout))),
        };
        let (ok, out) = match &result {
            Ok(o) => (true, tail(o)),
            Err(e) => (false, tail(e)),
        };
        if let Err(e) = store.lock().expect("lock").record_attempt(drill, &step.id, n, at, ok, &out) {
            tracing::error!(error = format!("{e:#}"), "Cannot record an attempt in the drill store");
        }
        if ok {
            break (Outcome::Passed, out);
        }
        if n > step.retries || t0.elapsed() + backoff >= timeout {
            break (if step.critical { Outcome::Failed } else { Outcome::Tolerated }, out);
        }
        tracing::warn!(step = %step.id, attempt = n, error = %out, retry_in = ?backoff, "Step failed; retrying");
        tokio::time::sleep(backoff).await;
        backoff *= 2;
    };
    StepResult { id: step.id.clone(), kind: step.kind(), stage: stage.into(), started, elapsed: t0.elapsed(), attempts: n, outcome, output }
}

/// Runs the runbook in `mode`; `drill` is its row in the store.
pub async fn run(l: Arc<Loaded>, mode: Mode, drill: i64, store: Arc<Mutex<Store>>, actor: &str) -> anyhow::Result<RunReport> {
    let secrets = {
        let l = l.clone();
        move |name: &str| l.runbook.secrets.get(name).and_then(|s| s.resolve(&l.file, name).ok()).unwrap_or_default()
    };
    let t0 = Instant::now();
    let mut steps: Vec<StepResult> = Vec::new();
    let mut failed = false;
    for stage in &l.runbook.stages {
        let parallel = stage.parallel.unwrap_or(l.runbook.parallel);
        let todo: Vec<&Step> = stage.steps.iter().filter(|s| s.modes.contains(&mode)).collect();
        if failed {
            for s in todo {
                steps.push(StepResult {
                    id: s.id.clone(),
                    kind: s.kind(),
                    stage: stage.name.clone(),
                    started: chrono::Utc::now(),
                    elapsed: Duration::ZERO,
                    attempts: 0,
                    outcome: Outcome::Skipped,
                    output: String::new(),
                });
            }
            continue;
        }
        let results: Vec<StepResult> =
            futures::stream::iter(todo).map(|s| run_step(s, &stage.name, &l, drill, &store, &secrets)).buffered(parallel).collect().await;
        for r in results {
            store.lock().expect("lock").audit(
                Some(drill),
                actor,
                "step",
                &format!("{} {} after {} attempt(s)", r.id, r.outcome.as_str(), r.attempts),
            )?;
            tracing::info!(step = %r.id, outcome = r.outcome.as_str(), attempts = r.attempts, seconds = r.elapsed.as_secs_f64(), "Step finished");
            failed |= r.outcome == Outcome::Failed;
            steps.push(r);
        }
    }
    let mut rollback = Vec::new();
    if failed {
        for s in l.runbook.on_failure.iter().filter(|s| s.modes.contains(&mode)) {
            let r = run_step(s, "on_failure", &l, drill, &store, &secrets).await;
            store.lock().expect("lock").audit(Some(drill), actor, "rollback-step", &format!("{} {}", r.id, r.outcome.as_str()))?;
            rollback.push(r);
        }
    }
    let rto = measure_rto(&l, &steps);
    Ok(RunReport { drill, passed: !failed, steps, rollback, rto, total: t0.elapsed() })
}

/// From the start of the `rto: start` step (default: the first step) to the
/// end of the `rto: end` step (default: the last one), when both ran.
fn measure_rto(l: &Loaded, steps: &[StepResult]) -> Option<Duration> {
    let marked = |m: RtoMarker| l.steps().into_iter().find(|(_, s)| s.rto == Some(m)).map(|(_, s)| s.id.clone());
    let ran: Vec<&StepResult> = steps.iter().filter(|s| s.outcome != Outcome::Skipped).collect();
    let start = match marked(RtoMarker::Start) {
        Some(id) => ran.iter().find(|s| s.id == id)?,
        None => ran.first()?,
    };
    let end = match marked(RtoMarker::End) {
        Some(id) => ran.iter().find(|s| s.id == id)?,
        None => ran.last()?,
    };
    let end_at = end.started + chrono::Duration::from_std(end.elapsed).ok()?;
    (end_at - start.started).to_std().ok()
}
