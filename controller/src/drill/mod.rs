//! Drills: running runbooks, their state, audit and reports.
pub mod engine;
pub mod report;
pub mod step;
pub mod store;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;

use crate::config::ControllerConfig;
use crate::runbook::{Loaded, Mode};

/// Held while a drill runs, so that no second controller resumes it.
pub fn lock(cfg: &ControllerConfig, id: i64) -> anyhow::Result<std::fs::File> {
    let path = cfg.state_dir.join(format!("drill-{id}.lock"));
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).with_context(|| path.display().to_string())?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!("drill {id} is running in another controller process"),
        Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| path.display().to_string()),
    }
}

/// Whether a controller process holds the drill's lock.
pub fn is_running(cfg: &ControllerConfig, id: i64) -> bool {
    lock(cfg, id).is_err()
}

/// Runs (or continues, or aborts) drill `id` while showing its progress,
/// then builds its report, keeps it in `state_dir/reports/` and stores it,
/// signed, on both providers. `lock` is held until the end.
#[allow(clippy::too_many_arguments)]
pub async fn run_and_report(
    cfg: Arc<ControllerConfig>,
    config: PathBuf,
    loaded: Arc<Loaded>,
    mode: Mode,
    id: i64,
    store: store::Store,
    actor: String,
    abort: bool,
    interactive: bool,
    _lock: std::fs::File,
) -> anyhow::Result<report::Report> {
    use std::io::IsTerminal;
    let key = cfg.report_key()?;
    let reports_dir = cfg.state_dir.join("reports");
    let store = Arc::new(Mutex::new(store));
    let mut drill = engine::Drill::new(loaded, mode, id, store.clone(), actor, Some((cfg, config.clone())))?;
    drill.interactive = interactive;
    let drill = Arc::new(drill);
    let progress = engine::show_progress(drill.clone());
    let ending = engine::run(&drill, abort).await;
    progress.abort();
    if interactive && std::io::stderr().is_terminal() {
        eprint!("\r\x1b[2K");
    }
    ending?;
    let r = report::build(&store.lock().expect("lock"), id)?;
    std::fs::create_dir_all(&reports_dir).with_context(|| reports_dir.display().to_string())?;
    let local = reports_dir.join(format!("drill-{id}.json"));
    std::fs::write(&local, serde_json::to_vec_pretty(&r)?).with_context(|| local.display().to_string())?;
    let (cfg, _) = drill.controller.as_ref().expect("set above");
    for (provider, res) in report::publish(&r, cfg, &config, &key).await {
        match res {
            Ok(k) => tracing::info!(drill = id, provider = %provider, key = %k, "Signed report stored"),
            Err(e) => tracing::warn!(drill = id, provider = %provider, error = %e, "The signed report could not be stored"),
        }
    }
    Ok(r)
}
