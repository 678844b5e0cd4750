//! Scheduled work of `serve`, each on its cron (local time), in tasks of
//! the service's tracker: drills, the daily sampled verify, the prune.
use std::path::Path;
use std::sync::{Arc, RwLock};

use bascule_core::schedule::Schedule;
use futures::StreamExt as _;

use super::{metrics, Tasks};
use crate::context::Controller;
use crate::runbook;
use crate::state::fleet::{Fleet, Held};

/// Runs `work` at every tick of `sched`, until the service stops.
fn on_schedule<F, Fut>(tasks: &Tasks, sched: Schedule, what: String, mut work: F)
where
    F: FnMut(chrono::DateTime<chrono::Local>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let cancel = tasks.cancel.clone();
    tasks.tracker.spawn(async move {
        while let Some(next) = sched.cron.upcoming(chrono::Local).next() {
            tracing::info!(at = %next, "Next scheduled {what}");
            tokio::select! {
                _ = tokio::time::sleep((next - chrono::Local::now()).to_std().unwrap_or_default()) => {}
                _ = cancel.cancelled() => return,
            }
            tokio::select! {
                _ = work(next) => {}
                _ = cancel.cancelled() => return,
            }
        }
    });
}

/// Starts every scheduled task of the configuration. A scheduled runbook is
/// validated now: a broken one stops `serve` at start, not at 3 a.m.
pub(super) fn start(c: &Arc<Controller>, tasks: &Tasks, fleet: Option<Arc<Fleet>>, held: Arc<RwLock<Held>>) -> anyhow::Result<()> {
    for entry in &c.config.serve.schedule {
        let file = if entry.runbook.is_absolute() {
            entry.runbook.clone()
        } else {
            c.file.parent().unwrap_or(Path::new(".")).join(&entry.runbook)
        };
        runbook::load(&file)?;
        let (c, mode, tasks_in, fleet) = (c.clone(), entry.mode, tasks.clone(), fleet.clone());
        let vars: Vec<(String, String)> = entry.vars.clone().into_iter().collect();
        on_schedule(tasks, entry.cron.clone(), format!("drill {}", file.display()), move |tick| {
            // with a shared state every replica sees the drill due: the first to claim
            // this tick of this runbook runs it (replicas share a time zone)
            if let Some(f) = &fleet {
                let name = runbook::load(&file).map(|l| l.runbook.name).unwrap_or_else(|_| file.display().to_string());
                let key = format!("drill {name} at {}", tick.with_timezone(&chrono::Utc).format("%Y-%m-%dT%H:%M:%SZ"));
                match f.claim_work(&key) {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::info!(runbook = %file.display(), "Scheduled drill started by another replica");
                        return std::future::ready(());
                    }
                    Err(e) => {
                        tracing::error!(runbook = %file.display(), error = format!("{e:#}"), "Scheduled drill not started");
                        return std::future::ready(());
                    }
                }
            }
            let started = runbook::load(&file)
                .map_err(anyhow::Error::from)
                .and_then(|l| crate::drill::start(&c, Arc::new(l), mode, &vars, "schedule"));
            match started {
                Ok(s) => {
                    let id = s.id;
                    tracing::info!(drill = id, runbook = %file.display(), "Scheduled drill started");
                    spawn_drill(&tasks_in, s);
                }
                Err(e) => tracing::error!(runbook = %file.display(), error = format!("{e:#}"), "Scheduled drill not started"),
            }
            std::future::ready(())
        });
    }
    let shared = fleet.is_some();
    if let Some(v) = &c.config.serve.verify_sample {
        let (c2, slices, held2) = (c.clone(), v.slices, shared.then(|| held.clone()));
        on_schedule(tasks, v.cron.clone(), "sampled verify".into(), move |_| {
            let c = c2.clone();
            let held = held2.clone();
            async move { verify_sample(&c, slices, held.as_deref()).await }
        });
    }
    if let Some(cron) = &c.config.prune.cron {
        let (c2, held2) = (c.clone(), shared.then(|| held.clone()));
        on_schedule(tasks, cron.clone(), "prune".into(), move |_| {
            let c = c2.clone();
            let held = held2.clone();
            async move { prune_all(&c, held.as_deref()).await }
        });
    }
    Ok(())
}

/// With a shared state, whether this replica holds `tenant` now (its
/// lease valid by this process's clock): scheduled work on a tenant is its
/// holder's, checked before each tenant. Without, every tenant is this
/// process's.
fn holds(held: Option<&RwLock<Held>>, tenant: &str) -> bool {
    let now = std::time::Instant::now();
    held.is_none_or(|h| h.read().unwrap_or_else(|e| e.into_inner()).get(tenant).is_some_and(|(_, until)| *until > now))
}

/// Runs a started drill in a task of the service.
pub(super) fn spawn_drill(tasks: &Tasks, started: crate::drill::Started) {
    let (id, cancel) = (started.id, tasks.cancel.child_token());
    tasks.tracker.spawn(async move {
        match started.run(false, cancel).await {
            Ok(r) => tracing::info!(drill = id, verdict = %r.verdict, "Drill finished"),
            Err(e) => tracing::error!(drill = id, error = format!("{e:#}"), "Drill stopped"),
        }
    });
}

/// Tenants a scheduled verify or prune works on at once (4 with the
/// default concurrency of 32, 8 with 64): each is mostly waiting on the
/// providers, and 35,000 one after the other would not fit a night.
fn tenants_at_once(c: &Controller) -> usize {
    (c.config.serve.concurrency / 8).max(1)
}

/// Runs `work` on every tenant this replica holds when its turn comes,
/// [`tenants_at_once`] at a time.
async fn each_held<'a, F, Fut>(c: &'a Controller, held: Option<&'a RwLock<Held>>, work: F)
where
    F: Fn(&'a str) -> Fut,
    Fut: std::future::Future<Output = ()> + 'a,
{
    let work = &work;
    // the futures made first (a closure inside the stream would make the
    // task's future not Send for every lifetime)
    let runs: Vec<_> = c
        .config
        .tenants
        .iter()
        .map(|t| async move {
            if holds(held, &t.name) {
                work(&t.name).await;
            }
        })
        .collect();
    futures::stream::iter(runs).buffer_unordered(tenants_at_once(c)).collect::<Vec<()>>().await;
}

/// One scheduled verify of every tenant, reading back today's slice.
pub async fn verify_sample(c: &Controller, slices: u64, held: Option<&RwLock<Held>>) {
    use crate::command::verify;
    let read = verify::ReadData::today(slices);
    each_held(c, held, |name| async move {
        let result = async { verify::run(&c.tenant(name)?, read, c.config.restore.concurrency).await }.await;
        verify_done(name, read, result);
    })
    .await;
}

fn verify_done(name: &str, read: crate::command::verify::ReadData, result: anyhow::Result<crate::command::verify::VerifyReport>) {
    match result {
        Ok(r) => {
            for p in &r.problems {
                metrics::INTEGRITY_FAILURES.with_label_values(&[name, &p.provider, "verify"]).inc();
                tracing::error!(tenant = %name, provider = %p.provider, key = %p.key, problem = %p.what, "Scheduled verify");
            }
            metrics::VERIFY_PROBLEMS.with_label_values(&[name]).set(r.problems.len() as i64);
            metrics::VERIFY_LAST_RUN.with_label_values(&[name]).set(metrics::ts(chrono::Utc::now()));
            tracing::info!(tenant = %name, objects = r.objects_checked, bytes_read = r.bytes_read, problems = r.problems.len(), ?read, "Scheduled verify done");
        }
        Err(e) => tracing::error!(tenant = %name, error = format!("{e:#}"), "Scheduled verify failed"),
    }
}

/// One scheduled prune of every tenant.
pub async fn prune_all(c: &Controller, held: Option<&RwLock<Held>>) {
    each_held(c, held, |name| async move {
        let result = async { crate::command::prune::run(c, &c.tenant(name)?, false, chrono::Utc::now()).await }.await;
        prune_done(name, result);
    })
    .await;
}

fn prune_done(name: &str, result: anyhow::Result<crate::command::prune::PruneReport>) {
    match result {
        Ok(r) => {
            for (p, k, why) in &r.failed {
                tracing::error!(tenant = %name, provider = %p, key = %k, error = %why, "Scheduled prune could not delete");
            }
            metrics::PRUNE_LAST_RUN.with_label_values(&[name]).set(metrics::ts(chrono::Utc::now()));
            metrics::PRUNE_FREED.with_label_values(&[name]).set(r.freed() as f64);
            metrics::PRUNE_UNVERIFIED.with_label_values(&[name]).set(r.unverified.len() as f64);
            metrics::PRUNE_REFUSED_LISTS.with_label_values(&[name]).set(r.refused_lists.len() as f64);
            for u in &r.unverified {
                tracing::warn!(tenant = %name, manifest = %u.name, error = %u.why, "Scheduled prune: a manifest verifies on no provider; what it may name is kept");
            }
            for (p, k, why) in &r.refused_lists {
                tracing::warn!(tenant = %name, provider = %p, key = %k, error = %why, "Scheduled prune ignored a condemned list");
            }
            let gone = r.snapshots.iter().filter(|s| s.keep.is_empty()).count();
            tracing::info!(tenant = %name, snapshots_deleted = gone, condemned = r.condemned.len(), freed = r.freed(), failed = r.failed.len(), "Scheduled prune done");
        }
        Err(e) => tracing::error!(tenant = %name, error = format!("{e:#}"), "Scheduled prune failed"),
    }
}
