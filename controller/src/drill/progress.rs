//! The elapsed time against the RTO target while a drill runs: a line kept
//! up to date on a terminal, a log line every 30 s otherwise.
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::engine::Drill;

/// Shows the drill's progress until the returned task is aborted.
pub fn show(d: Arc<Drill>) -> tokio::task::JoinHandle<()> {
    use std::io::{IsTerminal, Write};
    let target = d.loaded().runbook.targets.rto;
    tokio::spawn(async move {
        let t0 = Instant::now();
        let tty = std::io::stderr().is_terminal();
        let mut last_log = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let e = t0.elapsed();
            let line = format!(
                "drill {} {}: {} elapsed of the {} RTO target ({:.1} %); running: {}",
                d.ctx.id,
                d.loaded().runbook.name,
                hms(e),
                hms(target),
                100.0 * e.as_secs_f64() / target.as_secs_f64(),
                d.running().join(", ")
            );
            if tty {
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r\x1b[2K{line}");
                let _ = err.flush();
            } else if last_log.elapsed() >= Duration::from_secs(30) {
                tracing::info!("{line}");
                last_log = Instant::now();
            }
        }
    })
}

/// `1:02:03`.
pub fn hms(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}
