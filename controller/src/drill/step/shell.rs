//! `shell`: `sh -c COMMAND`, with its environment and directory; standard
//! output and error are kept.
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
    let out = c.output().await.map_err(|e| format!("cannot run sh: {e}"))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("{} — {}", out.status, text.trim()))
    }
}
