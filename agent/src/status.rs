//! `bascule-agent status`: is my backup working? One screen for the person
//! who looks after the server: each job's last and next run, the newest
//! snapshot each provider holds (from its signed HEAD, checked with this
//! agent's keys), the WAL spool, a provider's backlog, the newest restore
//! test. Exit status 0 fine, 1 something needs attention, 2 could not tell.
use std::path::PathBuf;

use bascule_core::head::Head;
use bascule_core::layout;
use bascule_core::signed::Signed;
use serde::{Deserialize, Serialize};

use crate::Agent;

/// How a job's last run ended (`<state_dir>/jobs/<job>.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LastRun {
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub seconds: f64,
    pub snapshot: Option<String>,
    pub source_bytes: u64,
    /// What was sent (new, after deduplication).
    pub new_bytes: u64,
    /// `complete`, `degraded` (one provider only), or `failed`.
    pub result: String,
    /// Why it was degraded or failed.
    pub why: Option<String>,
}

fn last_run_path(agent: &Agent, job: &str) -> PathBuf {
    agent.config.state_dir.join("jobs").join(format!("{job}.json"))
}

/// Keeps how a run ended (a failure to keep it is logged, not fatal).
pub fn record(agent: &Agent, job: &str, run: &LastRun) {
    let path = last_run_path(agent, job);
    if let Err(e) = bascule_core::config::write_atomic(&path, &serde_json::to_vec(run).unwrap_or_default()) {
        tracing::warn!(job, error = %e, "Cannot keep how the run ended");
    }
}

fn last_run(agent: &Agent, job: &str) -> Option<LastRun> {
    serde_json::from_slice(&std::fs::read(last_run_path(agent, job)).ok()?).ok()
}

#[derive(Debug, Serialize)]
pub struct JobStatus {
    pub job: String,
    pub last_run: Option<LastRun>,
    pub next_run: Option<chrono::DateTime<chrono::Local>>,
}

#[derive(Debug, Serialize)]
pub struct ProviderStatus {
    pub provider: String,
    /// `ok`, or why its HEAD could not be read or trusted.
    pub state: String,
    pub sequence: Option<u64>,
    pub newest_snapshot: Option<String>,
    pub newest_wal: Option<String>,
    pub updated_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Snapshots it lacks (it was down), copied by the next run or `sync`.
    pub backlog: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct SpoolStatus {
    pub files_waiting: u64,
    pub bytes: u64,
    pub oldest: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub tenant: String,
    pub jobs: Vec<JobStatus>,
    pub providers: Vec<ProviderStatus>,
    pub spool: Option<SpoolStatus>,
    pub restore_test: Option<bascule_core::restore_test::RestoreTestSummary>,
    /// What needs attention, in plain words (empty: all is well).
    pub attention: Vec<String>,
    /// Nothing could be read from any provider.
    pub unknown: bool,
}

pub async fn gather(agent: &Agent) -> anyhow::Result<Status> {
    let mut attention = Vec::new();
    let now = chrono::Local::now();
    let mut jobs = Vec::new();
    for j in &agent.config.jobs {
        let last = last_run(agent, &j.name);
        match &last {
            None => attention.push(format!("job {} has not run yet: run `bascule-agent snapshot --job {}` once by hand", j.name, j.name)),
            Some(r) if r.result == "failed" => attention.push(format!(
                "job {}'s last run failed: {} — fix it, then run `bascule-agent snapshot --job {}`",
                j.name,
                r.why.as_deref().unwrap_or("see the log"),
                j.name
            )),
            Some(r) if r.result == "degraded" => {
                attention.push(format!("job {}'s last run reached one provider only: {}", j.name, r.why.as_deref().unwrap_or("")))
            }
            _ => {}
        }
        jobs.push(JobStatus { job: j.name.clone(), last_run: last, next_run: j.schedule.cron.after(&now).next() });
    }
    let backlog = agent.backlog()?;
    let trusted = agent.trusted();
    let mut providers = Vec::new();
    let mut newest_test: Option<bascule_core::restore_test::RestoreTestSummary> = None;
    for r in &agent.replicated.replicas {
        let mut p = ProviderStatus {
            provider: r.provider.clone(),
            state: "ok".into(),
            sequence: None,
            newest_snapshot: None,
            newest_wal: None,
            updated_at: None,
            backlog: backlog.get(&r.provider).cloned().unwrap_or_default(),
        };
        match r.get(layout::HEAD, Head::MAX_LEN).await {
            Ok(Some(b)) => match Head::open(&b, &trusted, &agent.config.tenant, layout::HEAD) {
                Ok(h) => {
                    if h.restore_test.as_ref().is_some_and(|t| newest_test.as_ref().is_none_or(|n| t.at > n.at)) {
                        newest_test = h.restore_test.clone();
                    }
                    p.sequence = Some(h.sequence);
                    p.newest_snapshot = h.latest_snapshot;
                    p.newest_wal = h.latest_wal;
                    p.updated_at = Some(h.agent_time);
                }
                Err(e) => p.state = format!("its HEAD does not verify with this agent's keys: {e}"),
            },
            Ok(None) => p.state = "holds nothing of this tenant yet".into(),
            Err(e) => p.state = format!("unreachable: {e}"),
        }
        if p.state != "ok" {
            attention.push(format!("provider {}: {}", p.provider, p.state));
        }
        if !p.backlog.is_empty() {
            attention.push(format!(
                "provider {} lacks {} snapshot(s) (it was down): the next run copies them, or run `bascule-agent sync` now",
                p.provider,
                p.backlog.len()
            ));
        }
        providers.push(p);
    }
    let unknown = providers.iter().all(|p| p.state.starts_with("unreachable"));
    let spool = match agent.config.wal.as_ref() {
        Some(_) => {
            let spool = crate::wal::Spool::open(&agent.config.spool_dir()?)?;
            let (files, bytes) = spool.usage();
            let mut names = spool.unsealed()?;
            names.extend(spool.sealed_names()?);
            names.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
            if files > 16 {
                attention.push(format!("{files} WAL file(s) wait in the spool: is a provider down or too slow?"));
            }
            Some(SpoolStatus { files_waiting: files, bytes, oldest: names.first().map(|w| w.name.clone()) })
        }
        None => None,
    };
    if let Some(t) = newest_test.as_ref().filter(|t| !t.passed) {
        attention.push(format!("the newest restore test ({}, job {}) failed: run `bascule-agent restore-test` to see why", t.at, t.job));
    }
    Ok(Status { tenant: agent.config.tenant.clone(), jobs, providers, spool, restore_test: newest_test, attention, unknown })
}

fn when(t: chrono::DateTime<chrono::Utc>) -> String {
    let ago = (chrono::Utc::now() - t).num_minutes();
    let local = t.with_timezone(&chrono::Local).format("%Y-%m-%d %H:%M");
    match ago {
        0 => format!("{local} (just now)"),
        m if m < 120 => format!("{local} ({m} min ago)"),
        m if m < 48 * 60 => format!("{local} ({} h ago)", m / 60),
        m => format!("{local} ({} days ago)", m / 1440),
    }
}

fn bytes(n: u64) -> String {
    let mut v = n as f64;
    for unit in ["B", "KiB", "MiB", "GiB"] {
        if v < 1024.0 {
            return if unit == "B" { format!("{n} B") } else { format!("{v:.1} {unit}") };
        }
        v /= 1024.0;
    }
    format!("{v:.1} TiB")
}

/// The screen.
pub fn render(s: &Status) -> String {
    let mut o = format!("tenant {}\n\n", s.tenant);
    for j in &s.jobs {
        match &j.last_run {
            Some(r) => o.push_str(&format!(
                "job {}: last run {}, {:.0} s, {} read, {} sent: {}{}\n",
                j.job,
                when(r.started_at),
                r.seconds,
                bytes(r.source_bytes),
                bytes(r.new_bytes),
                r.result,
                r.why.as_ref().map(|w| format!(" ({w})")).unwrap_or_default()
            )),
            None => o.push_str(&format!("job {}: never run\n", j.job)),
        }
        if let Some(n) = j.next_run {
            o.push_str(&format!("    next run {}\n", n.format("%Y-%m-%d %H:%M")));
        }
    }
    o.push('\n');
    for p in &s.providers {
        if p.state == "ok" {
            o.push_str(&format!(
                "provider {}: newest snapshot {}, newest WAL {}, updated {}\n",
                p.provider,
                p.newest_snapshot.as_deref().unwrap_or("none"),
                p.newest_wal.as_deref().unwrap_or("none"),
                p.updated_at.map(when).unwrap_or_default()
            ));
        } else {
            o.push_str(&format!("provider {}: {}\n", p.provider, p.state));
        }
        if !p.backlog.is_empty() {
            o.push_str(&format!("    lacks {} snapshot(s): {}\n", p.backlog.len(), p.backlog.join(", ")));
        }
    }
    if let Some(sp) = &s.spool {
        o.push_str(&format!(
            "\nWAL spool: {} file(s) waiting, {}{}\n",
            sp.files_waiting,
            bytes(sp.bytes),
            sp.oldest.as_ref().map(|n| format!(", oldest {n}")).unwrap_or_default()
        ));
    }
    match &s.restore_test {
        Some(t) => {
            o.push_str(&format!("\nnewest restore test: {} ({}), {}\n", if t.passed { "passed" } else { "FAILED" }, t.job, when(t.at)))
        }
        None => o.push_str("\nno restore test yet (see `bascule-agent restore-test`)\n"),
    }
    if s.unknown {
        o.push_str("\nCANNOT TELL: no provider answered.\n");
    } else if s.attention.is_empty() {
        o.push_str("\nall is well.\n");
    } else {
        o.push_str("\nNEEDS ATTENTION:\n");
        for a in &s.attention {
            o.push_str(&format!("  - {a}\n"));
        }
    }
    o
}
