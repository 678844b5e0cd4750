//! Progress of a long run (an export, a restore): on a terminal, a bar (or,
//! when the size is not known ahead, a counter) and a sentence per phase;
//! otherwise a log line per phase and one every 30 s saying how far it got.
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, ProgressBar, ProgressStyle};

/// How often a run without a terminal says how far it got.
const LINE_EVERY: Duration = Duration::from_secs(30);

#[derive(Clone, Default)]
pub struct Progress {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    /// What runs, e.g. `restore of 20261201T013000Z-1a2b3c4d`.
    what: String,
    total: Option<u64>,
    done: AtomicU64,
    note: Mutex<String>,
    bar: Option<ProgressBar>,
    t0: Instant,
    last_line: Mutex<Instant>,
}

impl Progress {
    /// No bar and no periodic lines, phases logged (the daemon).
    pub fn hidden() -> Progress {
        Progress { inner: None }
    }

    /// Progress of `what` over `total` bytes when known: a bar on a terminal
    /// (standard error), log lines otherwise.
    pub fn bytes(what: impl Into<String>, total: Option<u64>) -> Progress {
        Self::with(what.into(), total, std::io::stderr().is_terminal())
    }

    fn with(what: String, total: Option<u64>, terminal: bool) -> Progress {
        let bar = terminal.then(|| {
            let (bar, template) = match total {
                Some(t) => {
                    (ProgressBar::new(t), "{prefix} [{bar:30}] {bytes}/{total_bytes} {percent}% ({bytes_per_sec}, {eta} left) {msg}")
                }
                None => (ProgressBar::new_spinner(), "{spinner} {prefix}: {elapsed_precise} {bytes} read ({bytes_per_sec}) {msg}"),
            };
            bar.set_style(ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> "));
            bar.set_prefix(what.clone());
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        let now = Instant::now();
        let inner = Inner { what, total, done: AtomicU64::new(0), note: Mutex::default(), bar, t0: now, last_line: Mutex::new(now) };
        Progress { inner: Some(Arc::new(inner)) }
    }

    /// A sentence: printed above the bar, or logged.
    pub fn phase(&self, sentence: &str) {
        match self.inner.as_ref().and_then(|i| i.bar.as_ref()) {
            Some(b) => b.println(sentence),
            None => tracing::info!("{sentence}"),
        }
    }

    /// `n` more bytes done.
    pub fn add(&self, n: u64) {
        if let Some(i) = &self.inner {
            let done = i.done.fetch_add(n, Ordering::Relaxed) + n;
            self.moved(i, done);
        }
    }

    /// `done` bytes done so far, and a short note after the figures.
    pub fn set(&self, done: u64, note: impl FnOnce() -> String) {
        if let Some(i) = &self.inner {
            i.done.store(done, Ordering::Relaxed);
            *i.note.lock().unwrap_or_else(|e| e.into_inner()) = note();
            self.moved(i, done);
        }
    }

    fn moved(&self, i: &Inner, done: u64) {
        let note = i.note.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(b) = &i.bar {
            b.set_position(done);
            b.set_message(note);
            return;
        }
        let mut last = i.last_line.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed() < LINE_EVERY {
            return;
        }
        *last = Instant::now();
        tracing::info!("{}", i.line(done, &note));
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(b) = self.inner.as_ref().and_then(|i| i.bar.as_ref()) {
            b.finish_and_clear();
        }
    }
}

impl Inner {
    /// `restore of X: 1.2 GiB of 4.0 GiB (30 %), 45.0 MiB/s, about 1 min left`.
    fn line(&self, done: u64, note: &str) -> String {
        let secs = self.t0.elapsed().as_secs_f64().max(0.001);
        let rate = done as f64 / secs;
        let mut s = match self.total {
            Some(t) if t > 0 => {
                let left = if rate > 0.0 { (t.saturating_sub(done)) as f64 / rate } else { f64::INFINITY };
                format!(
                    "{}: {} of {} ({:.0} %), {}/s, {}",
                    self.what,
                    HumanBytes(done),
                    HumanBytes(t),
                    100.0 * done as f64 / t as f64,
                    HumanBytes(rate as u64),
                    if left.is_finite() { format!("about {} min left", (left / 60.0).ceil() as u64) } else { "starting".into() }
                )
            }
            _ => format!("{}: {} so far, {}/s", self.what, HumanBytes(done), HumanBytes(rate as u64)),
        };
        if !note.is_empty() {
            s.push_str(", ");
            s.push_str(note);
        }
        s
    }
}

/// `1.50 GiB`.
pub fn human(bytes: u64) -> String {
    HumanBytes(bytes).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_says_how_far_and_how_long_is_left() {
        let p = Progress::with("restore of s".into(), Some(4 << 30), false);
        let i = p.inner.as_ref().unwrap();
        let line = i.line(1 << 30, "");
        assert!(line.starts_with("restore of s: 1.00 GiB of 4.00 GiB (25 %), "), "{line}");
        assert!(line.ends_with("min left"), "{line}");
        let line = i.line(0, "3 MiB new");
        assert!(line.contains("(0 %)") && line.contains("starting, 3 MiB new"), "{line}");
        let unknown = Progress::with("export".into(), None, false);
        assert!(unknown.inner.as_ref().unwrap().line(2048, "").starts_with("export: 2.00 KiB so far"));
        // hidden: nothing to say, nothing held
        Progress::hidden().add(5);
        assert!(Progress::hidden().inner.is_none());
    }
}
