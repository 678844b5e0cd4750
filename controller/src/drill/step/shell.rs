//! `shell`: `sh -c COMMAND`, with its environment and directory; standard
//! output and error are kept. They go to an unlinked file rather than a
//! pipe: a command that starts a daemon (`pg_ctl start`) returns when it
//! exits, not when the daemon closes what it inherited.
use std::io::{Read, Seek, SeekFrom};

use super::Drill;
use crate::runbook::ShellStep;

pub async fn run(sh: &ShellStep, d: &Drill) -> Result<String, String> {
    let mut c = tokio::process::Command::new("sh");
    c.arg("-c").arg(d.sub(&sh.command)).kill_on_drop(true).stdin(std::process::Stdio::null());
    for (k, v) in &sh.env {
        c.env(k, d.sub(v));
    }
    if let Some(dir) = &sh.dir {
        c.current_dir(d.sub(&dir.to_string_lossy()));
    }
    let mut file = unlinked_file().map_err(|e| format!("cannot create the output file: {e}"))?;
    let clone = || file.try_clone().map_err(|e| format!("cannot share the output file: {e}"));
    c.stdout(clone()?).stderr(clone()?);
    let status = c.status().await.map_err(|e| format!("cannot run sh: {e}"))?;
    let mut text = Vec::new();
    file.seek(SeekFrom::Start(0)).and_then(|_| file.read_to_end(&mut text)).map_err(|e| format!("cannot read the output: {e}"))?;
    let text = String::from_utf8_lossy(&text).to_string();
    if status.success() {
        Ok(text)
    } else {
        Err(format!("{status} — {}", text.trim()))
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
