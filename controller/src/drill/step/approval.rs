//! `approval`: a person says yes (or no) before the drill goes on, at the
//! terminal or with `bascule-controller drill approve ID STEP` from anywhere
//! that reaches the drill store. Who answered is in the audit log.
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::Drill;
use crate::runbook::{ApprovalStep, OnTimeout, Step};

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

pub async fn run(a: &ApprovalStep, step: &Step, d: &Drill) -> Result<String, String> {
    let deadline = step.timeout.map(|t| Instant::now() + t);
    let prompt = d.sub(&a.prompt);
    eprintln!(
        "\nAPPROVAL NEEDED — drill {}, step {}: {prompt}\n  {}run: bascule-controller drill approve --config {} {} {} [--reject]\n",
        d.id,
        step.id,
        if d.interactive { "type yes or no here, or " } else { "" },
        d.controller().map(|(_, f)| f.display().to_string()).unwrap_or("CONFIG".into()),
        d.id,
        step.id
    );
    // drop what was typed before the question
    if d.interactive {
        while terminal_lines().lock().expect("lock").try_recv().is_ok() {}
    }
    loop {
        if d.interactive {
            let got = terminal_lines().lock().expect("lock").try_recv();
            match got {
                Ok(line) => match line.trim().to_lowercase().as_str() {
                    "yes" | "y" => {
                        d.answer(&step.id, true);
                    }
                    "no" | "n" => {
                        d.answer(&step.id, false);
                    }
                    _ => eprintln!("  answer yes or no"),
                },
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => {}
            }
        }
        if let Some((approved, who)) = d.approval(&step.id)? {
            return if approved { Ok(format!("approved by {who}")) } else { Err(format!("rejected by {who}")) };
        }
        if deadline.is_some_and(|t| Instant::now() >= t) {
            let waited = humantime_serde::re::humantime::format_duration(step.timeout.unwrap_or_default());
            return match a.on_timeout {
                OnTimeout::Fail => Err(format!("nobody answered within {waited}")),
                OnTimeout::Continue => Ok(format!("nobody answered within {waited}; going on, as the runbook says")),
            };
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
