//! `approval`: a person says yes (or no) before the drill goes on, at the
//! terminal or with `bascule-controller drill approve ID STEP` from anywhere
//! that reaches the drill store. Who answered is in the audit log.
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::{Invalid, StepContext, StepError, StepOutcome};
use crate::runbook::Runbook;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalStep {
    /// What the approver is asked.
    pub prompt: String,
    /// What happens when nobody answers within the step's timeout.
    #[serde(default)]
    pub on_timeout: OnTimeout,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnTimeout {
    #[default]
    Fail,
    Continue,
}

/// Lines typed at the terminal, read by one thread for the whole process.
fn terminal_lines() -> &'static Mutex<Receiver<String>> {
    static LINES: OnceLock<Mutex<Receiver<String>>> = OnceLock::new();
    LINES.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::stdin().lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Mutex::new(rx)
    })
}

fn next_line() -> Result<String, TryRecvError> {
    terminal_lines().lock().unwrap_or_else(|e| e.into_inner()).try_recv()
}

impl ApprovalStep {
    pub fn validate(&self, _: &Runbook) -> Result<(), Invalid> {
        Ok(())
    }

    pub fn needs(&self, _: &dyn Fn(&str) -> String) -> super::needs::Needs {
        super::needs::Needs::default()
    }

    pub fn describe(&self, sub: &dyn Fn(&str) -> String) -> String {
        format!("ask {:?}", sub(&self.prompt))
    }

    /// Waits for the answer (the step's own timeout says what then).
    pub async fn run(&self, ctx: &StepContext<'_>, cancel: CancellationToken) -> Result<StepOutcome, StepError> {
        let (d, step) = (ctx.drill, ctx.step);
        let deadline = step.timeout.map(|t| Instant::now() + t);
        eprintln!(
            "\nAPPROVAL NEEDED — drill {}, step {}: {}\n  {}run: bascule-controller drill approve --config {} {} {} [--reject]\n",
            d.id,
            step.id,
            ctx.sub(&self.prompt),
            if d.interactive { "type yes or no here, or " } else { "" },
            ctx.controller().map(|c| c.file.display().to_string()).unwrap_or("CONFIG".into()),
            d.id,
            step.id
        );
        // drop what was typed before the question
        if d.interactive {
            while next_line().is_ok() {}
        }
        loop {
            if d.interactive {
                if let Ok(line) = next_line() {
                    match line.trim().to_lowercase().as_str() {
                        "yes" | "y" => ctx.answer(true),
                        "no" | "n" => ctx.answer(false),
                        _ => eprintln!("  answer yes or no"),
                    }
                }
            }
            match ctx.approval() {
                Ok(Some((approved, who))) => {
                    return if approved {
                        Ok(StepOutcome::text(format!("approved by {who}")))
                    } else {
                        Err(StepError::Failed(format!("rejected by {who}")))
                    };
                }
                Ok(None) => {}
                // a state store that restarts is no answer: ask again until the step's timeout
                Err(e) => tracing::warn!(step = %step.id, error = %e, "Cannot read the approval from the drill store; asking again"),
            }
            if deadline.is_some_and(|t| Instant::now() >= t) {
                let waited = humantime_serde::re::humantime::format_duration(step.timeout.unwrap_or_default());
                return match self.on_timeout {
                    OnTimeout::Fail => Err(StepError::Failed(format!("nobody answered within {waited}"))),
                    OnTimeout::Continue => Ok(StepOutcome::text(format!("nobody answered within {waited}; going on, as the runbook says"))),
                };
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                _ = cancel.cancelled() => return Err(StepError::Cancelled),
            }
        }
    }
}
