//! `bascule-controller serve`: the monitor loop, scheduled work (drills,
//! sampled verifies, prunes), and the HTTP API with `/metrics`.
//!
//! Every task hangs off one root cancellation token and one task tracker:
//! SIGTERM cancels them all (a running drill stops its step and stays
//! resumable), and `serve` waits for them up to a deadline before it exits.
pub mod api;
pub mod guard;
pub mod metrics;
pub mod monitor;
mod schedule;
mod tls;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::context::Controller;
use crate::state::Store;

pub use schedule::{prune_all, verify_sample};

/// How long running tasks get to stop after a shutdown request.
const STOP_DEADLINE: Duration = Duration::from_secs(30);

/// The tasks of the service: cancelled together, awaited together.
#[derive(Clone)]
pub struct Tasks {
    pub cancel: CancellationToken,
    pub tracker: TaskTracker,
}

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

/// The monitor: every `serve.interval`, a cycle over every tenant, then the
/// drill metrics; until cancelled.
async fn monitor_loop(
    c: Arc<Controller>,
    store: Arc<Mutex<Store>>,
    mut monitor: monitor::Monitor,
    tasks: Tasks,
    gained: Arc<tokio::sync::Notify>,
) {
    let interval = c.config.serve.interval;
    let cancel = tasks.cancel.clone();
    loop {
        let started = tokio::time::Instant::now();
        let cycle = tokio::select! {
            c = monitor.cycle() => c,
            _ = cancel.cancelled() => return,
        };
        tracing::info!(
            tenants = cycle.tenants,
            changed = cycle.changed,
            listed = cycle.deep,
            refused = cycle.refused,
            errors = cycle.errors,
            seconds = cycle.took.as_secs_f64(),
            "Monitor cycle"
        );
        if cycle.took > interval {
            tracing::warn!(
                seconds = cycle.took.as_secs_f64(),
                interval = interval.as_secs(),
                "The monitor cycle took longer than its interval"
            );
        }
        if let Err(e) = drill_metrics(&store.lock().unwrap_or_else(|e| e.into_inner())) {
            tracing::error!(error = format!("{e:#}"), "Cannot read the drill store");
        }
        tokio::select! {
            _ = tokio::time::sleep_until(started + interval) => {}
            // tenants just taken over (a replica stopped): read them now
            _ = gained.notified() => {}
            _ = cancel.cancelled() => return,
        }
    }
}

/// With a shared state, every interval, in a thread of its own (opening a
/// drill's store and lease waits on the database, never on the monitor):
/// [`take_over_drills`].
async fn takeover_loop(c: Arc<Controller>, fleet: Arc<crate::state::fleet::Fleet>, tasks: Tasks) {
    let mut tried = std::collections::HashMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(c.config.serve.interval) => {}
            _ = tasks.cancel.cancelled() => return,
        }
        let (c2, f2, t2) = (c.clone(), fleet.clone(), tasks.clone());
        match tokio::task::spawn_blocking(move || {
            take_over_drills(&c2, &f2, &t2, &mut tried);
            tried
        })
        .await
        {
            Ok(t) => tried = t,
            Err(_) => return,
        }
    }
}

/// With a shared state: resumes, here, each unfinished drill whose holder
/// stopped renewing its lease (a replica killed mid-step). A drill that
/// cannot be resumed is tried again after ten minutes.
fn take_over_drills(
    c: &Arc<Controller>,
    fleet: &crate::state::fleet::Fleet,
    tasks: &Tasks,
    tried: &mut std::collections::HashMap<i64, std::time::Instant>,
) {
    let orphans = match fleet.orphaned_drills() {
        Ok(o) => o,
        Err(e) => return tracing::error!(error = format!("{e:#}"), "Cannot look for drills to take over"),
    };
    tried.retain(|_, at| at.elapsed() < Duration::from_secs(600));
    for id in orphans {
        if tried.insert(id, std::time::Instant::now()).is_some() {
            continue;
        }
        match crate::drill::resume(c, id, false, &format!("serve:{}", fleet.me())) {
            Ok(s) => {
                tracing::warn!(drill = id, replica = fleet.me(), "Taking over a drill whose holder stopped; resuming it here");
                schedule::spawn_drill(tasks, s);
            }
            Err(e) => tracing::warn!(drill = id, error = format!("{e:#}"), "Cannot take over the drill"),
        }
    }
}

/// Waits for SIGTERM or Ctrl-C (`term` is registered before anything
/// starts: a signal that comes early is not the default action, death
/// without stopping the drills' steps).
async fn shutdown_signal(term: std::io::Result<tokio::signal::unix::Signal>, cancel: CancellationToken) {
    let Ok(mut term) = term else {
        tracing::error!("Cannot listen for SIGTERM; stop with Ctrl-C");
        let _ = tokio::signal::ctrl_c().await;
        cancel.cancel();
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = cancel.cancelled() => return,
    }
    tracing::info!("Stopping");
    cancel.cancel();
}

/// Writes the refusals the guard holds to the audit log, every
/// [`guard::FLUSH_EVERY`], in one transaction.
fn flush_refusals(g: &guard::Guard, store: &Mutex<Store>) {
    let rows = g.take();
    if rows.is_empty() {
        return;
    }
    let rows: Vec<(&str, &str, &str)> = rows.iter().map(|r| (r.actor.as_str(), "api", r.detail.as_str())).collect();
    if let Err(e) = store.lock().unwrap_or_else(|e| e.into_inner()).audit_many(None, &rows) {
        tracing::error!(error = format!("{e:#}"), rows = rows.len(), "Cannot write refused API calls to the audit log");
    }
}

async fn flush_loop(g: Arc<guard::Guard>, store: Arc<Mutex<Store>>, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(guard::FLUSH_EVERY) => {}
            _ = cancel.cancelled() => return,
        }
        flush_refusals(&g, &store);
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>> for api::Peer {
    fn connect_info(s: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        api::Peer(s.remote_addr().ip())
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tls::TlsListener>> for api::Peer {
    fn connect_info(s: axum::serve::IncomingStream<'_, tls::TlsListener>) -> Self {
        api::Peer(s.remote_addr().ip())
    }
}

pub async fn run(c: Arc<Controller>) -> anyhow::Result<()> {
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    metrics::register();
    let tasks = Tasks { cancel: CancellationToken::new(), tracker: TaskTracker::new() };
    let fleet = c.fleet()?.map(Arc::new);
    if let Some(f) = &fleet {
        f.join()?;
        tracing::info!(replica = f.me(), lease = ?f.lease(), "Sharing the PostgreSQL state with the other replicas");
    }
    let monitor = monitor::Monitor::new(c.clone(), fleet.clone())?;
    let view = monitor.view.clone();
    let held = monitor.held();
    let store = Arc::new(Mutex::new(c.store()?));
    let gained = Arc::new(tokio::sync::Notify::new());
    if let Some(mut l) = monitor.leases() {
        // a connection of their own (API reads and view writes never delay a
        // renewal); a first round before the first cycle, then on their own clock
        l.fleet = Arc::new(c.fleet()?.context("the state store")?);
        l.balance()?;
        tasks.tracker.spawn(monitor::keep_leases(l, gained.clone(), tasks.cancel.clone()));
    }
    tasks.tracker.spawn(monitor_loop(c.clone(), store.clone(), monitor, tasks.clone(), gained));
    if let Some(f) = &fleet {
        tasks.tracker.spawn(takeover_loop(c.clone(), f.clone(), tasks.clone()));
    }
    schedule::start(&c, &tasks, fleet.clone(), held)?;
    tasks.tracker.spawn(crate::command::pitr::standby::keep(c.clone(), tasks.cancel.clone()));
    let guard = Arc::new(guard::Guard::default());
    tasks.tracker.spawn(flush_loop(guard.clone(), store.clone(), tasks.cancel.clone()));
    let app = api::router(api::Api {
        controller: c.clone(),
        store: store.clone(),
        view,
        tasks: tasks.clone(),
        guard: guard.clone(),
        fleet: fleet.clone(),
    })
    .into_make_service_with_connect_info::<api::Peer>();
    let listen = c.config.serve.listen;
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let shutdown = {
        let cancel = tasks.cancel.clone();
        async move { shutdown_signal(term, cancel).await }
    };
    let served = match &c.config.serve.tls {
        Some(t) => {
            let l = tls::TlsListener::new(listener, &t.cert, &t.key)?;
            tracing::info!(listen = %listen, "Serving HTTPS");
            axum::serve(l, app).with_graceful_shutdown(shutdown).await
        }
        None => {
            if !listen.ip().is_loopback() {
                tracing::warn!(listen = %listen, "Serving plain HTTP beyond loopback (serve.allow_plaintext): API tokens travel in clear unless a TLS proxy stands in front");
            }
            tracing::info!(listen = %listen, "Serving HTTP");
            axum::serve(listener, app).with_graceful_shutdown(shutdown).await
        }
    };
    tasks.cancel.cancel();
    flush_refusals(&guard, &store);
    tasks.tracker.close();
    if tokio::time::timeout(STOP_DEADLINE, tasks.tracker.wait()).await.is_err() {
        tracing::error!("Tasks did not stop within {STOP_DEADLINE:?}; exiting anyway (an unfinished drill is resumed with `drill resume`)");
    }
    if let Some(f) = &fleet {
        // the others take the tenants over at their next cycle, not after the lease time
        match f.leave() {
            Ok(n) => tracing::info!(tenants = n, "Gave the leases back"),
            Err(e) => tracing::warn!(error = format!("{e:#}"), "Cannot give the leases back; they run out on their own"),
        }
    }
    Ok(served?)
}
