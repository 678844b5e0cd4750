//! `shell`: `sh -c COMMAND`, with its environment and directory; standard
//! output and error are kept. They go to an unlinked file rather than a
//! pipe: a command that starts a daemon (`pg_ctl start`) returns when it
//! exits, not when the daemon closes what it inherited.
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::{Invalid, StepContext, StepError, StepOutcome};
use crate::runbook::Runbook;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShellStep {
    /// Run by `sh -c`.
    pub command: String,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub dir: Option<PathBuf>,
}

impl ShellStep {
    pub fn validate(&self, _: &Runbook) -> Result<(), Invalid> {
        Ok(())
    }

    pub fn describe(&self, sub: &dyn Fn(&str) -> String) -> String {
        format!("sh -c {:?}", sub(&self.command))
    }

    /// Runs the command; a cancelled drill kills it.
    pub async fn run(&self, ctx: &StepContext<'_>, cancel: CancellationToken) -> Result<StepOutcome, StepError> {
        let mut c = tokio::process::Command::new("sh");
        c.arg("-c").arg(ctx.sub(&self.command)).kill_on_drop(true).stdin(std::process::Stdio::null());
        for (k, v) in &self.env {
            c.env(k, ctx.sub(v));
        }
        if let Some(dir) = &self.dir {
            c.current_dir(ctx.sub(&dir.to_string_lossy()));
        }
        let mut file = unlinked_file().map_err(|e| format!("cannot create the output file: {e}"))?;
        let clone = || file.try_clone().map_err(|e| format!("cannot share the output file: {e}"));
        c.stdout(clone()?).stderr(clone()?);
        let status = tokio::select! {
            s = c.status() => s.map_err(|e| format!("cannot run sh: {e}"))?,
            _ = cancel.cancelled() => return Err(StepError::Cancelled),
        };
        let mut text = Vec::new();
        file.seek(SeekFrom::Start(0)).and_then(|_| file.read_to_end(&mut text)).map_err(|e| format!("cannot read the output: {e}"))?;
        let text = String::from_utf8_lossy(&text).to_string();
        if status.success() {
            Ok(StepOutcome::text(text))
        } else {
            Err(StepError::Failed(format!("{status} — {}", text.trim())))
        }
    }
}

/// A file with no name: nothing is left behind, whatever happens.
fn unlinked_file() -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = std::env::temp_dir().join(format!("bascule-step-{}-{}", std::process::id(), rand_suffix()));
    let f = std::fs::OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(f)
}

fn rand_suffix() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos() as u64;
    (t << 16) ^ N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}
