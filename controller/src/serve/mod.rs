//! `bascule-controller serve`: the monitor loop, scheduled drills, and the
//! HTTP API with `/metrics`.
pub mod api;
pub mod metrics;
pub mod monitor;
mod tls;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;

use crate::config::ControllerConfig;
use crate::drill::store::Store;
use crate::runbook;

/// The newest finished drill of each runbook, as metrics.
pub fn drill_metrics(store: &Store) -> anyhow::Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    for d in store.drills()? {
        let Some(finished) = d.finished_at else { continue };
        if !seen.insert(d.runbook.clone()) {
            continue;
        }
        let rb = d.runbook.as_str();
        let result = if crate::drill::report::judge(&d).2.is_empty() { "pass" } else { "fail" };
        let other = if result == "pass" { "fail" } else { "pass" };
        metrics::DRILL_LAST_RUN.with_label_values(&[rb, result]).set(metrics::ts(finished));
        let _ = metrics::DRILL_LAST_RUN.remove_label_values(&[rb, other]);
        metrics::RTO_TARGET.with_label_values(&[rb]).set(d.rto_target.as_secs_f64());
        match d.measures.rto {
            Some(v) => metrics::DRILL_RTO.with_label_values(&[rb]).set(v.as_secs_f64()),
            None => drop(metrics::DRILL_RTO.remove_label_values(&[rb])),
        }
        match d.measures.rpo {
            Some(v) => metrics::DRILL_RPO.with_label_values(&[rb]).set(v.as_secs_f64()),
            None => drop(metrics::DRILL_RPO.remove_label_values(&[rb])),
        }
        for s in store.steps(d.id)? {
            metrics::DRILL_STEP_DURATION.with_label_values(&[rb, &s.id]).set(s.elapsed().as_secs_f64());
        }
    }
    Ok(())
}

/// Runs `work` at every tick of `sched`, in a task of its own.
fn on_schedule<F, Fut>(sched: bascule_core::schedule::Schedule, what: String, mut work: F)
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        while let Some(next) = sched.cron.upcoming(chrono::Local).next() {
            tracing::info!(at = %next, "Next scheduled {what}");
            tokio::time::sleep((next - chrono::Local::now()).to_std().unwrap_or_default()).await;
            work().await;
        }
    });
}

/// Runs the scheduled drills of the configuration, each on its cron.
fn schedule_drills(cfg: &Arc<ControllerConfig>, config_file: &Path) -> anyhow::Result<()> {
    for entry in &cfg.serve.schedule {
        let sched: bascule_core::schedule::Schedule = entry.cron.parse().map_err(anyhow::Error::msg)?;
        let file = if entry.runbook.is_absolute() {
            entry.runbook.clone()
        } else {
            config_file.parent().unwrap_or(Path::new(".")).join(&entry.runbook)
        };
        // validated now: a broken runbook stops `serve` at start, not at 3 a.m.
        runbook::load(&file)?;
        let (cfg, config_file, mode_name, vars) = (cfg.clone(), config_file.to_path_buf(), entry.mode.clone(), entry.vars.clone());
        let what = format!("drill {}", file.display());
        on_schedule(sched, what, move || {
            let mode = if mode_name == "failover" { runbook::Mode::Failover } else { runbook::Mode::Drill };
            let started = runbook::load(&file)
                .map_err(anyhow::Error::from)
                .and_then(|l| api::launch(cfg.clone(), config_file.clone(), l, mode, &mode_name, &vars, "schedule"));
            match started {
                Ok(id) => tracing::info!(drill = id, runbook = %file.display(), "Scheduled drill started"),
                Err(e) => tracing::error!(runbook = %file.display(), error = format!("{e:#}"), "Scheduled drill not started"),
            }
            async {}
        });
    }
    Ok(())
}

/// One scheduled verify of every tenant, reading back today's slice.
pub async fn verify_sample(cfg: &ControllerConfig, config_file: &Path, slices: u64) {
    use crate::command::verify;
    let read = verify::ReadData::today(slices);
    for t in &cfg.tenants {
        let result = async {
            let mut tenant = crate::tenant::Tenant::open(cfg, config_file, &t.name)?;
            verify::run(&mut tenant, read, cfg.restore.concurrency).await
        }
        .await;
        match result {
            Ok(r) => {
                for p in &r.problems {
                    metrics::INTEGRITY_FAILURES.with_label_values(&[&t.name, &p.provider, "verify"]).inc();
                    tracing::error!(tenant = %t.name, provider = %p.provider, key = %p.key, problem = %p.what, "Scheduled verify");
                }
                metrics::VERIFY_PROBLEMS.with_label_values(&[&t.name]).set(r.problems.len() as i64);
                metrics::VERIFY_LAST_RUN.with_label_values(&[&t.name]).set(metrics::ts(chrono::Utc::now()));
                tracing::info!(tenant = %t.name, objects = r.objects_checked, bytes_read = r.bytes_read, problems = r.problems.len(), ?read, "Scheduled verify done");
            }
            Err(e) => tracing::error!(tenant = %t.name, error = format!("{e:#}"), "Scheduled verify failed"),
        }
    }
}

/// One scheduled prune of every tenant.
pub async fn prune_all(cfg: &ControllerConfig, config_file: &Path) {
    for t in &cfg.tenants {
        let result = async {
            let tenant = crate::tenant::Tenant::open(cfg, config_file, &t.name)?;
            crate::command::prune::run(cfg, &tenant, false, chrono::Utc::now()).await
        }
        .await;
        match result {
            Ok(r) => {
                for (p, k, why) in &r.failed {
                    tracing::error!(tenant = %t.name, provider = %p, key = %k, error = %why, "Scheduled prune could not delete");
                }
                metrics::PRUNE_LAST_RUN.with_label_values(&[&t.name]).set(metrics::ts(chrono::Utc::now()));
                metrics::PRUNE_FREED.with_label_values(&[&t.name]).set(r.freed() as f64);
                let gone = r.snapshots.iter().filter(|s| s.keep.is_empty()).count();
                tracing::info!(tenant = %t.name, snapshots_deleted = gone, condemned = r.condemned.len(), freed = r.freed(), failed = r.failed.len(), "Scheduled prune done");
            }
            Err(e) => tracing::error!(tenant = %t.name, error = format!("{e:#}"), "Scheduled prune failed"),
        }
    }
}

pub async fn run(cfg: ControllerConfig, config_file: PathBuf) -> anyhow::Result<()> {
    metrics::register();
    let cfg = Arc::new(cfg);
    let mut monitor = monitor::Monitor::new(&cfg, &config_file)?;
    let view = monitor.view.clone();
    let store = Arc::new(Mutex::new(Store::open(&cfg.drill_store())?));
    let interval = cfg.serve.interval;
    {
        let store = store.clone();
        tokio::spawn(async move {
            loop {
                let started = tokio::time::Instant::now();
                let c = monitor.cycle().await;
                tracing::info!(
                    tenants = c.tenants,
                    changed = c.changed,
                    listed = c.deep,
                    refused = c.refused,
                    errors = c.errors,
                    seconds = c.took.as_secs_f64(),
                    "Monitor cycle"
                );
                if c.took > interval {
                    tracing::warn!(
                        seconds = c.took.as_secs_f64(),
                        interval = interval.as_secs(),
                        "The monitor cycle took longer than its interval"
                    );
                }
                if let Err(e) = drill_metrics(&store.lock().expect("lock")) {
                    tracing::error!(error = format!("{e:#}"), "Cannot read the drill store");
                }
                tokio::time::sleep_until(started + interval).await;
            }
        });
    }
    schedule_drills(&cfg, &config_file)?;
    if let Some(v) = &cfg.serve.verify_sample {
        let sched: bascule_core::schedule::Schedule = v.cron.parse().map_err(anyhow::Error::msg)?;
        let (cfg, config_file, slices) = (cfg.clone(), config_file.clone(), v.slices);
        on_schedule(sched, "sampled verify".into(), move || {
            let (cfg, config_file) = (cfg.clone(), config_file.clone());
            async move { verify_sample(&cfg, &config_file, slices).await }
        });
    }
    if let Some(cron) = &cfg.prune.cron {
        let sched: bascule_core::schedule::Schedule = cron.parse().map_err(anyhow::Error::msg)?;
        let (cfg, config_file) = (cfg.clone(), config_file.clone());
        on_schedule(sched, "prune".into(), move || {
            let (cfg, config_file) = (cfg.clone(), config_file.clone());
            async move { prune_all(&cfg, &config_file).await }
        });
    }
    let app = api::router(api::Api { cfg: cfg.clone(), config_file: config_file.clone(), store, view });
    let listener =
        tokio::net::TcpListener::bind(cfg.serve.listen).await.with_context(|| format!("cannot listen on {}", cfg.serve.listen))?;
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("Stopping");
    };
    match &cfg.serve.tls {
        Some(t) => {
            let l = tls::TlsListener::new(listener, &t.cert, &t.key)?;
            tracing::info!(listen = %cfg.serve.listen, "Serving HTTPS");
            axum::serve(l, app).with_graceful_shutdown(shutdown).await?;
        }
        None => {
            tracing::info!(listen = %cfg.serve.listen, "Serving HTTP");
            axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
        }
    }
    Ok(())
}
