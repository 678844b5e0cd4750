//! The daemon: each job on its cron schedule, never two runs of one job at
//! once, a clean stop on SIGTERM.
use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Local};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Agent;
use bascule_core::progress::Progress;

/// How long running jobs get to stop after a shutdown request.
const STOP_DEADLINE: Duration = Duration::from_secs(30);

/// Runs one job now: replays the backlog if there is one, then exports.
/// Returns whether the run was complete on both providers.
/// `at` records the snapshot as taken at that time instead of now.
pub async fn run_job(
    agent: Arc<Agent>,
    job_name: &str,
    at: Option<chrono::DateTime<chrono::Utc>>,
    cancel: CancellationToken,
    progress: &Progress,
) -> anyhow::Result<bool> {
    let job = agent.config.job(job_name)?;
    if !agent.backlog()?.is_empty() {
        progress.phase("a provider missed earlier snapshots: copying what it lacks");
        if let Err(e) = agent.sync().await {
            tracing::warn!(error = %e, "Backlog not replayed yet");
        }
    }
    let started = chrono::Utc::now();
    let t0 = std::time::Instant::now();
    let report = match crate::snapshot::run(agent.clone(), job, at, cancel, progress).await {
        Ok(r) => r,
        Err(e) => {
            let run = crate::status::LastRun {
                started_at: started,
                seconds: t0.elapsed().as_secs_f64(),
                snapshot: None,
                source_bytes: 0,
                new_bytes: 0,
                result: "failed".into(),
                why: Some(bascule_core::logging::one_line(e.chain())),
            };
            crate::status::record(&agent, job_name, &run);
            return Err(e);
        }
    };
    progress.finish();
    let missed: Vec<String> = report.providers.iter().filter_map(|(p, r)| r.as_ref().err().map(|e| format!("{p}: {e}"))).collect();
    crate::status::record(
        &agent,
        job_name,
        &crate::status::LastRun {
            started_at: started,
            seconds: report.elapsed.as_secs_f64(),
            snapshot: Some(report.name.clone()),
            source_bytes: report.source_bytes,
            new_bytes: report.new_bytes,
            result: if report.degraded() { "degraded" } else { "complete" }.into(),
            why: (!missed.is_empty()).then(|| missed.join("; ")),
        },
    );
    for (p, r) in &report.providers {
        match r {
            Ok(()) => tracing::info!(job = job_name, snapshot = %report.name, provider = %p, "Snapshot committed"),
            Err(e) => {
                tracing::error!(job = job_name, snapshot = %report.name, provider = %p, error = %e, "Snapshot missing on this provider (degraded); kept in the backlog")
            }
        }
    }
    tracing::info!(
        job = job_name,
        snapshot = %report.name,
        source_bytes = report.source_bytes,
        chunks = report.chunk_count,
        new_bytes = report.new_bytes,
        stored_bytes = report.stored_bytes,
        index_bytes = report.index_bytes,
        seconds = report.elapsed.as_secs_f64(),
        "Export finished"
    );
    if !report.degraded() {
        crate::metrics::JOB_LAST_SUCCESS.with_label_values(&[job_name]).set(crate::metrics::timestamp(std::time::SystemTime::now()));
    }
    Ok(!report.degraded())
}

fn next_after(agent: &Agent, i: usize, t: DateTime<Local>) -> Option<DateTime<Local>> {
    agent.config.jobs[i].schedule.cron.after(&t).next()
}

pub async fn run_daemon(agent: Arc<Agent>, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let running: Arc<Mutex<HashSet<String>>> = Arc::default();
    if agent.config.wal.is_some() {
        // a spool that cannot be used stops the daemon now, not silently later
        crate::wal::Spool::open(&agent.config.spool_dir()?)?;
        let (agent, cancel) = (agent.clone(), cancel.clone());
        tracker.spawn(async move {
            if let Err(e) = crate::wal::ship(agent, cancel).await {
                tracing::error!(error = format!("{e:#}"), "WAL shipping failed");
            }
        });
    }
    if let Some(m) = &agent.config.metrics {
        // a port already taken stops the daemon now
        let listener_check = std::net::TcpListener::bind(m.listen).map_err(|e| anyhow::anyhow!("metrics.listen {}: {e}", m.listen))?;
        drop(listener_check);
        let (listen, cancel) = (m.listen, cancel.clone());
        tracker.spawn(async move {
            if let Err(e) = crate::metrics::serve(listen, cancel).await {
                tracing::error!(error = format!("{e:#}"), "Metrics endpoint stopped");
            }
        });
    }
    if agent.config.heartbeat.is_some() {
        tracker.spawn(crate::heartbeat::run(agent.clone(), cancel.clone()));
    }
    let mut next: Vec<Option<DateTime<Local>>> = (0..agent.config.jobs.len()).map(|i| next_after(&agent, i, Local::now())).collect();
    for (j, n) in agent.config.jobs.iter().zip(&next) {
        tracing::info!(job = %j.name, schedule = %j.schedule.text, next = ?n.map(|t| t.to_rfc3339()), "Job scheduled");
    }
    tokio::pin!(shutdown);
    loop {
        let Some(when) = next.iter().flatten().min().copied() else {
            tracing::warn!("No job has a future run; waiting for shutdown");
            shutdown.as_mut().await;
            break;
        };
        let wait = (when - Local::now()).to_std().unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.as_mut() => break,
        }
        let now = Local::now();
        for (i, slot) in next.iter_mut().enumerate() {
            if slot.is_some_and(|t| t <= now) {
                *slot = next_after(&agent, i, now);
                let name = agent.config.jobs[i].name.clone();
                if !running.lock().expect("lock").insert(name.clone()) {
                    tracing::warn!(job = %name, "Previous run still going; this tick is skipped");
                    continue;
                }
                let (agent, running, cancel) = (agent.clone(), running.clone(), cancel.child_token());
                tracker.spawn(async move {
                    match run_job(agent, &name, None, cancel, &Progress::hidden()).await {
                        Ok(true) => {}
                        Ok(false) => tracing::error!(job = %name, "Run degraded: one provider lacks this snapshot"),
                        Err(e) => tracing::error!(job = %name, error = format!("{e:#}"), "Run failed"),
                    }
                    running.lock().expect("lock").remove(&name);
                });
            }
        }
    }
    tracing::info!("Stopping: cancelling running jobs");
    cancel.cancel();
    tracker.close();
    if tokio::time::timeout(STOP_DEADLINE, tracker.wait()).await.is_err() {
        tracing::error!("Jobs did not stop within {STOP_DEADLINE:?}; exiting anyway (a re-run resumes)");
    }
    Ok(())
}
