//! Progress of a long run: a bar on a terminal, one log line per phase otherwise.
use std::io::IsTerminal;

pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    /// A bar when standard error is a terminal.
    pub fn auto() -> Self {
        if !std::io::stderr().is_terminal() {
            return Progress { bar: None };
        }
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} {bytes} read ({bytes_per_sec}), {msg}")
                .expect("valid template"),
        );
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        Progress { bar: Some(bar) }
    }

    pub fn hidden() -> Self {
        Progress { bar: None }
    }

    pub fn phase(&self, what: &str) {
        match &self.bar {
            Some(b) => b.println(what),
            None => tracing::info!("{what}"),
        }
    }

    pub fn update(&self, read: u64, uploaded_new: u64) {
        if let Some(b) = &self.bar {
            b.set_position(read);
            b.set_message(format!("{} new sealed", indicatif::HumanBytes(uploaded_new)));
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
