//! `shell`: `sh -c COMMAND`, the command exactly as the runbook writes it.
//! Variables are never pasted into it: each is in the command's
//! environment under its own name (`"$tenant"` in the command), so that a
//! value is data whatever it holds. Secrets go only through `env:`. The
//! environment is otherwise clean ([`bascule_core::child`]). Standard
//! output and error are kept; they go to an unlinked file rather than a
//! pipe: a command that starts a daemon (`pg_ctl start`) returns when it
//! exits, not when the daemon closes what it inherited.
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::{Invalid, StepContext, StepError, StepOutcome};
use crate::runbook::{references, Runbook};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShellStep {
    /// Run by `sh -c`, as written; it reads variables as `"$name"`.
    pub command: String,
    /// More environment variables (upper case names): values may use
    /// `${name}` and `${secret.name}`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub dir: Option<PathBuf>,
}

impl ShellStep {
    pub fn validate(&self, _: &Runbook) -> Result<(), Invalid> {
        if references(&self.command).iter().any(|r| r.starts_with("secret.")) {
            return Err(Invalid::new(
                "shell.command",
                "a secret cannot be in a command (every local user can read a command line): give it in `env:` (TOKEN: \"${secret.token}\") \
                 and use \"$TOKEN\"",
            ));
        }
        for k in self.env.keys() {
            let upper = k.chars().next().is_some_and(|c| c.is_ascii_uppercase() || c == '_')
                && k.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            if !upper {
                return Err(Invalid::new(format!("shell.env.{k}"), "an environment variable of `env:` has an upper case name"));
            }
        }
        Ok(())
    }

    pub fn needs(&self, _: &dyn Fn(&str) -> String) -> super::needs::Needs {
        super::needs::Needs::default()
    }

    pub fn describe(&self, _: &dyn Fn(&str) -> String) -> String {
        format!("sh -c {:?}", self.command)
    }

    /// Runs the command; a cancelled drill kills it.
    pub async fn run(&self, ctx: &StepContext<'_>, cancel: CancellationToken) -> Result<StepOutcome, StepError> {
        let mut c = tokio::process::Command::new("sh");
        bascule_core::child::clean(&mut c);
        c.envs(ctx.drill.vars());
        for (k, v) in &self.env {
            c.env(k, ctx.sub_secrets(v));
        }
        c.arg("-c").arg(&self.command).kill_on_drop(true).stdin(std::process::Stdio::null());
        if let Some(dir) = &self.dir {
            c.current_dir(ctx.sub(&dir.to_string_lossy()));
        }
        let mut file = unlinked_file().map_err(|e| format!("cannot create the output file: {e}"))?;
        let clone = || file.try_clone().map_err(|e| format!("cannot share the output file: {e}"));
        c.stdout(clone()?).stderr(clone()?);
        // a group of its own: a cancelled step stops with everything it started,
        // however the cancellation reaches it (here, or its future dropped)
        c.process_group(0);
        let mut child = c.spawn().map_err(|e| format!("cannot run sh: {e}"))?;
        let mut group = Group(child.id().and_then(|p| rustix::process::Pid::from_raw(p as i32)));
        let status = tokio::select! {
            s = child.wait() => s.map_err(|e| format!("cannot run sh: {e}"))?,
            _ = cancel.cancelled() => return Err(StepError::Cancelled),
        };
        // it ended on its own: what it left running in the background is its business
        group.0 = None;
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

/// A step's process group while it runs: dropped before the step ended (a
/// cancelled drill), SIGTERM to the whole group, SIGKILL 5 s later.
struct Group(Option<rustix::process::Pid>);

impl Drop for Group {
    fn drop(&mut self) {
        use rustix::process::{kill_process_group, Signal};
        let Some(pid) = self.0.take() else { return };
        if kill_process_group(pid, Signal::TERM).is_ok() {
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_secs(5));
                let _ = kill_process_group(pid, Signal::KILL);
            });
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
