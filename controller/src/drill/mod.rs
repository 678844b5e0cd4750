//! Drills: starting one (the same way from the command line, the API and
//! the schedule), running it ([`engine`]), showing its progress, and its
//! report ([`report`]), kept locally and stored, signed, on both providers.
pub mod engine;
pub mod progress;
pub mod readiness;
pub mod report;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::context::Controller;
use crate::model::Mode;
use crate::runbook::step::DrillContext;
use crate::runbook::Loaded;
use crate::state::fleet::{Fleet, DRILL};
use crate::state::{Fence, NewDrill, Store};

/// The person behind an actor: `api:bob` is bob's token, `alice@host` the
/// OS account alice (on whichever host).
fn person(actor: &str) -> &str {
    if actor.starts_with("api:") {
        actor
    } else {
        actor.split('@').next().unwrap_or(actor)
    }
}

/// Whether `actor` may give this answer: in failover mode (unless the
/// runbook says `four_eyes: false`), whoever started the drill may reject
/// an approval step, never approve it.
pub fn may_answer(loaded: &Loaded, mode: Mode, started_by: &str, approved: bool, actor: &str) -> Result<(), String> {
    if approved && mode == Mode::Failover && loaded.runbook.four_eyes && person(actor) == person(started_by) {
        return Err(format!(
            "four eyes: {actor} started this failover and cannot approve it; another person must (bascule-controller drill approve, \
             or the API with another token)"
        ));
    }
    Ok(())
}

/// Held while a drill runs, so that no second controller runs it too: a
/// file lock under state_dir, or, with a shared state, the drill's lease
/// (renewed while the drill runs, given back when it stops).
pub enum Hold {
    File(#[allow(dead_code)] std::fs::File),
    Lease { fleet: Arc<Fleet>, epoch: i64 },
}

/// Takes the drill's lock or lease.
pub fn lock(c: &Controller, id: i64) -> anyhow::Result<Hold> {
    if let Some(fleet) = c.fleet()? {
        return match fleet.claim(DRILL, &id.to_string())? {
            Some(epoch) => Ok(Hold::Lease { fleet: Arc::new(fleet), epoch }),
            None => {
                let by = fleet.holder(DRILL, &id.to_string())?.unwrap_or_else(|| "another replica".into());
                anyhow::bail!("drill {id} is running in another controller process ({by})")
            }
        };
    }
    let path = c.config.state_dir.join(format!("drill-{id}.lock"));
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).with_context(|| path.display().to_string())?;
    match f.try_lock() {
        Ok(()) => Ok(Hold::File(f)),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!("drill {id} is running in another controller process"),
        Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| path.display().to_string()),
    }
}

/// Whether a controller process holds the drill's lock (or lease).
pub fn is_running(c: &Controller, id: i64) -> bool {
    match c.fleet() {
        Ok(Some(f)) => f.holder(DRILL, &id.to_string()).map_or(true, |h| h.is_some()),
        Ok(None) => lock(c, id).is_err(),
        Err(_) => true,
    }
}

/// Renews the drill's lease while it runs; cancels the drill when the lease
/// is lost (taken over), or when it could not be renewed before it runs out
/// by this process's clock (counted from before each renewal was asked, a
/// sixth of the lease short), whatever a slow call to the store is doing.
fn keep_lease(fleet: Arc<Fleet>, id: i64, epoch: i64, drill: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let lease = fleet.lease();
        let mut deadline = tokio::time::Instant::now() + lease - lease / 6;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(lease / 3) => {}
                _ = tokio::time::sleep_until(deadline) => {}
                _ = drill.cancelled() => return,
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::error!(drill = id, "The drill's lease could not be renewed in time; stopping it here");
                drill.cancel();
                return;
            }
            let asked = tokio::time::Instant::now();
            let f = fleet.clone();
            let renew = tokio::task::spawn_blocking(move || f.renew(DRILL, &id.to_string(), epoch));
            match tokio::time::timeout_at(deadline, renew).await {
                Ok(Ok(Ok(true))) => deadline = asked + lease - lease / 6,
                Ok(Ok(Ok(false))) => {
                    tracing::error!(drill = id, epoch, "The drill's lease was taken over by another replica; stopping it here");
                    drill.cancel();
                    return;
                }
                Ok(Ok(Err(e))) => tracing::warn!(drill = id, error = format!("{e:#}"), "Cannot renew the drill's lease"),
                Ok(Err(_)) => return,
                Err(_) => {}
            }
        }
    })
}

/// A drill recorded in the store and locked by this process, ready to run.
pub struct Started {
    pub id: i64,
    controller: Arc<Controller>,
    loaded: Arc<Loaded>,
    mode: Mode,
    store: Store,
    actor: String,
    /// Run only the rollback (`drill abort`).
    abort: bool,
    hold: Hold,
}

/// Records a new drill of `loaded` with its variables (each one the
/// runbook declares) and locks it: the one way a drill starts, from the
/// command line, the API or the schedule.
pub fn start(c: &Arc<Controller>, loaded: Arc<Loaded>, mode: Mode, vars: &[(String, String)], actor: &str) -> anyhow::Result<Started> {
    for (k, v) in vars {
        loaded.check_value(k, v).map_err(anyhow::Error::msg)?;
    }
    // every secret resolves before anything is recorded
    crate::runbook::step::resolve_secrets(&loaded)?;
    // the report key exists before anything runs
    c.report_key()?;
    let mut store = c.store()?;
    let host = crate::os_user::hostname();
    let t = &loaded.runbook.targets;
    let id = store.create_drill(&NewDrill {
        runbook: &loaded.runbook.name,
        runbook_file: &loaded.file,
        runbook_hash: &loaded.hash,
        mode,
        started_by: actor,
        host: &host,
        rto_target: t.rto,
        rpo_target: t.rpo,
    })?;
    for (k, v) in vars {
        store.set_variable(id, k, v)?;
    }
    let lock = lock(c, id)?;
    if let Hold::Lease { fleet, epoch } = &lock {
        store.fence(Fence { drill: id, holder: fleet.me().to_string(), epoch: *epoch, lost: None });
    }
    Ok(Started { id, controller: c.clone(), loaded, mode, store, actor: actor.into(), abort: false, hold: lock })
}

/// An unfinished drill, to continue (`drill resume`) or roll back (`drill
/// abort`), with the very runbook it started with.
pub fn resume(c: &Arc<Controller>, id: i64, abort: bool, actor: &str) -> anyhow::Result<Started> {
    let mut store = c.store()?;
    let d = store.drill(id)?;
    if d.finished() {
        anyhow::bail!("drill {id} is over ({}); see `drill report {id}`", d.status);
    }
    let lock = lock(c, id)?;
    if let Hold::Lease { fleet, epoch } = &lock {
        store.fence(Fence { drill: id, holder: fleet.me().to_string(), epoch: *epoch, lost: None });
    }
    let file = PathBuf::from(&d.runbook_file);
    let loaded = Arc::new(crate::runbook::load(&file)?);
    if loaded.hash != d.runbook_hash {
        anyhow::bail!(
            "{} changed since drill {id} started (sha {} then, {} now): resume needs the runbook it started with",
            file.display(),
            &d.runbook_hash[..16.min(d.runbook_hash.len())],
            &loaded.hash[..16]
        );
    }
    store.audit(Some(id), actor, if abort { "drill-abort" } else { "drill-resume" }, &format!("was {}", d.status))?;
    let done = store.steps(id)?.len();
    eprintln!("drill {id}: {} {} ({} step(s) had ended)", if abort { "aborting" } else { "resuming" }, d.runbook, done);
    Ok(Started { id, controller: c.clone(), loaded, mode: d.mode, store, actor: actor.into(), abort, hold: lock })
}

/// Gives the drill's lease back when the run ends, however it ends.
struct Release<'a>(&'a Hold, i64, Option<tokio::task::JoinHandle<()>>);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        if let Some(k) = self.2.take() {
            k.abort();
        }
        if let Hold::Lease { fleet, epoch } = self.0 {
            if let Err(e) = fleet.release(DRILL, &self.1.to_string(), *epoch) {
                tracing::warn!(drill = self.1, error = format!("{e:#}"), "Cannot give the drill's lease back; it runs out on its own");
            }
        }
    }
}

impl Started {
    pub fn runbook(&self) -> &Loaded {
        &self.loaded
    }

    /// Runs (or continues, or aborts) the drill while showing its progress,
    /// then builds its report, keeps it in `state_dir/reports/` and stores
    /// it, signed, on both providers. The lock is held until the end.
    pub async fn run(self, interactive: bool, cancel: CancellationToken) -> anyhow::Result<report::Report> {
        use std::io::IsTerminal;
        let c = self.controller.clone();
        let key = c.report_key()?;
        let reports_dir = c.config.state_dir.join("reports");
        let overrides = self.store.variables(self.id)?;
        // with a shared state: the lease renewed while the drill runs, given back after
        let cancel = cancel.child_token();
        let mut store = self.store;
        store.stop_on_lost_lease(cancel.clone());
        let store = Arc::new(Mutex::new(store));
        let keeper = match &self.hold {
            Hold::Lease { fleet, epoch } => Some(keep_lease(fleet.clone(), self.id, *epoch, cancel.clone())),
            Hold::File(_) => None,
        };
        let _release = Release(&self.hold, self.id, keeper);
        let mut ctx = DrillContext::new(self.id, self.loaded, self.actor, Some(c.clone()), store.clone(), overrides)?;
        ctx.interactive = interactive;
        ctx.mode = self.mode;
        let drill = Arc::new(engine::Drill::new(ctx, self.mode));
        let shown = progress::show(drill.clone());
        let ending = engine::run(&drill, self.abort, &cancel).await;
        shown.abort();
        if interactive && std::io::stderr().is_terminal() {
            eprint!("\r\x1b[2K");
        }
        ending?;
        let r = report::build(&store.lock().unwrap_or_else(|e| e.into_inner()), self.id)?;
        std::fs::create_dir_all(&reports_dir).with_context(|| reports_dir.display().to_string())?;
        let local = reports_dir.join(format!("drill-{}.json", self.id));
        std::fs::write(&local, serde_json::to_vec_pretty(&r)?).with_context(|| local.display().to_string())?;
        for (provider, res) in report::publish(&r, &c, &key).await {
            match res {
                Ok(k) => tracing::info!(drill = self.id, provider = %provider, key = %k, "Signed report stored"),
                Err(e) => tracing::warn!(drill = self.id, provider = %provider, error = %e, "The signed report could not be stored"),
            }
        }
        Ok(r)
    }
}
