//! `drill …`: plan, run, resume, abort, approve, list, report, audit.
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Subcommand;
use tokio_util::sync::CancellationToken;

use crate::command::ConfigArg;
use crate::drill::{self, report};
use crate::model::Mode;
use crate::os_user::actor;
use crate::runbook;

#[derive(Subcommand)]
pub enum DrillCommand {
    /// Validate a runbook completely and print its resolved plan, without
    /// running anything. Secrets are shown by name only.
    Plan {
        /// The runbook (see runbooks/).
        file: PathBuf,
        /// Which steps to show: those of a drill or of a real failover.
        #[arg(long, value_enum, default_value = "drill")]
        mode: ModeArg,
        /// Set a runbook variable: NAME=VALUE (repeatable).
        #[arg(long = "var", value_name = "NAME=VALUE")]
        vars: Vec<String>,
    },
    /// Check, without running anything, what the runbook's steps will need:
    /// both providers reachable and current, the newest restore test, the
    /// identity files, every host of its DSNs and URLs, the standby's lag or
    /// room to restore the newest base backup, the PostgreSQL programs. One
    /// line per check; exit status 1 when one fails.
    Check {
        /// The controller's configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// The runbook (see runbooks/).
        file: PathBuf,
        /// The steps of a drill, or of a real failover.
        #[arg(long, value_enum, default_value = "drill")]
        mode: ModeArg,
        /// Set a runbook variable: NAME=VALUE (repeatable).
        #[arg(long = "var", value_name = "NAME=VALUE")]
        vars: Vec<String>,
    },
    /// Run a runbook. Every step is recorded (with each attempt) in the drill
    /// store under the controller's state_dir, and in its audit log; the
    /// report is printed, kept, signed and stored on both providers.
    /// Exit status 0 only when the verdict is PASS.
    Run {
        /// The controller's configuration file (its state_dir holds drills.sqlite).
        #[arg(long, short)]
        config: PathBuf,
        /// The runbook (see runbooks/).
        file: PathBuf,
        /// `drill` runs the steps of a drill, `failover` those of a real failover.
        #[arg(long, value_enum, default_value = "drill")]
        mode: ModeArg,
        /// Set a runbook variable: NAME=VALUE (repeatable; the name must be
        /// under the runbook's `variables:`).
        #[arg(long = "var", value_name = "NAME=VALUE")]
        vars: Vec<String>,
    },
    /// Continue a drill whose controller stopped (killed, crashed, rebooted):
    /// steps that ended are not run again, an interrupted one runs again.
    Resume {
        #[command(flatten)]
        config: ConfigArg,
        /// The drill's number (`drill list`).
        id: i64,
    },
    /// Stop an unfinished drill for good: run its rollback (`on_failure`)
    /// steps that have not run, and record it as aborted.
    Abort {
        #[command(flatten)]
        config: ConfigArg,
        id: i64,
    },
    /// Answer a drill's approval step (from any terminal that reaches the
    /// drill store); the answer and who gave it go to the audit log.
    Approve {
        #[command(flatten)]
        config: ConfigArg,
        id: i64,
        /// The approval step's id.
        step: String,
        /// Say no: the step fails.
        #[arg(long)]
        reject: bool,
    },
    /// The drills in the store, newest first; unfinished ones whose
    /// controller is gone show as `interrupted`.
    List {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// A drill's report: the verdict, RTO and RPO against their targets,
    /// every step; HTML is one self-contained page with a timeline.
    Report {
        #[command(flatten)]
        config: ConfigArg,
        id: i64,
        #[arg(long, value_enum, default_value = "md")]
        format: ReportFormat,
        /// Write it to this file instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Check the audit log's hash chain.
    Audit {
        #[command(flatten)]
        config: ConfigArg,
        /// Verify the chain (the only action for now).
        #[arg(long)]
        verify: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ReportFormat {
    Json,
    Md,
    Html,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ModeArg {
    Drill,
    Failover,
}

impl ModeArg {
    fn mode(self) -> Mode {
        match self {
            ModeArg::Drill => Mode::Drill,
            ModeArg::Failover => Mode::Failover,
        }
    }
}

pub async fn main(command: DrillCommand) -> anyhow::Result<ExitCode> {
    match command {
        DrillCommand::Plan { file, mode, vars } => {
            let mut loaded = runbook::load(&file)?;
            let vars = loaded.parse_vars(&vars)?;
            for (k, v) in vars {
                if let Some(var) = loaded.runbook.variables.get_mut(&k) {
                    var.default = v;
                }
            }
            // a secret that cannot be resolved is an error now, not when its step runs
            runbook::step::resolve_secrets(&loaded)?;
            print!("{}", runbook::plan::render(&loaded, mode.mode()));
            Ok(ExitCode::SUCCESS)
        }
        DrillCommand::Check { config, file, mode, vars } => {
            let c = crate::context::Controller::load(&config)?;
            let loaded = runbook::load(&file)?;
            let mut values = loaded.defaults();
            values.extend(loaded.parse_vars(&vars)?);
            let checks = drill::readiness::check(&c, &loaded, &values, mode.mode()).await;
            for ch in &checks {
                println!("{ch}");
            }
            let failed = checks.iter().filter(|c| c.result.is_err()).count();
            println!("{}: {} check(s), {failed} failed", loaded.runbook.name, checks.len());
            Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        DrillCommand::Run { config, file, mode, vars } => {
            let c = crate::context::Controller::load(&config)?;
            let loaded = Arc::new(runbook::load(&file)?);
            let vars = loaded.parse_vars(&vars)?;
            let started = drill::start(&c, loaded.clone(), mode.mode(), &vars, &actor())?;
            eprintln!("drill {}: {} ({}), runbook {}", started.id, loaded.runbook.name, mode.mode(), file.display());
            execute(&config, started).await
        }
        DrillCommand::Resume { config, id } => execute(&config.config, drill::resume(&config.load()?, id, false, &actor())?).await,
        DrillCommand::Abort { config, id } => execute(&config.config, drill::resume(&config.load()?, id, true, &actor())?).await,
        DrillCommand::Approve { config, id, step, reject } => approve(config, id, step, reject),
        DrillCommand::List { config } => list(config),
        DrillCommand::Report { config, id, format, output } => {
            let store = config.load()?.store()?;
            let r = report::build(&store, id)?;
            let text = match format {
                ReportFormat::Json => serde_json::to_string_pretty(&r)? + "\n",
                ReportFormat::Md => report::markdown::markdown(&r),
                ReportFormat::Html => report::html::page(&r),
            };
            match output {
                Some(p) => std::fs::write(&p, text).with_context(|| p.display().to_string())?,
                None => print!("{text}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        DrillCommand::Audit { config, verify: _ } => match config.load()?.store()?.verify_audit()? {
            Ok(n) => {
                println!("audit log: {n} row(s), chain intact");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                println!("AUDIT LOG BROKEN: {e}");
                Ok(ExitCode::FAILURE)
            }
        },
    }
}

fn approve(config: ConfigArg, id: i64, step: String, reject: bool) -> anyhow::Result<ExitCode> {
    let mut store = config.load()?.store()?;
    let d = store.drill(id)?;
    if d.finished() {
        anyhow::bail!("drill {id} is over ({})", d.status);
    }
    let l = runbook::load(std::path::Path::new(&d.runbook_file))?;
    if !l.has_approval(&step) {
        anyhow::bail!("drill {id}: {} has no approval step {step:?}", d.runbook_file);
    }
    drill::may_answer(&l, d.mode, &d.started_by, !reject, &actor()).map_err(anyhow::Error::msg)?;
    if store.answer(id, &step, !reject, &actor())? {
        println!("drill {id}, step {step}: {}", if reject { "rejected" } else { "approved" });
        return Ok(ExitCode::SUCCESS);
    }
    match store.approval(id, &step)? {
        Some((approved, who)) => {
            anyhow::bail!("drill {id}, step {step}: already {} by {who}", if approved { "approved" } else { "rejected" })
        }
        None => anyhow::bail!("drill {id}, step {step}: the answer could not be recorded"),
    }
}

fn list(config: ConfigArg) -> anyhow::Result<ExitCode> {
    let c = config.load()?;
    let store = c.store()?;
    println!("{:>5}  {:<20} {:<8} {:<20} {:<13} {:>10} {:>10}", "id", "runbook", "mode", "started", "status", "RTO", "RPO");
    for d in store.drills()? {
        let status = if !d.finished() && !drill::is_running(&c, d.id) { "interrupted".to_string() } else { d.status.to_string() };
        let f = |v: Option<std::time::Duration>| v.map(|v| format!("{:.1}s", v.as_secs_f64())).unwrap_or("-".into());
        println!(
            "{:>5}  {:<20} {:<8} {:<20} {:<13} {:>10} {:>10}",
            d.id,
            d.runbook,
            d.mode.as_str(),
            d.started_at.format("%Y-%m-%d %H:%M:%S"),
            status,
            f(d.measures.rto),
            f(d.measures.rpo)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs (or continues) a drill, then prints its steps and summary.
async fn execute(config: &std::path::Path, started: drill::Started) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal;
    let id = started.id;
    let interactive = std::io::stdin().is_terminal();
    let r = started.run(interactive, CancellationToken::new()).await?;
    for s in &r.steps {
        println!(
            "{:<12} {:<26} {:<16} {:>9.1}s  {} attempt(s)  {}",
            s.stage,
            s.id,
            s.kind,
            s.duration_seconds,
            s.attempts,
            s.outcome.as_str()
        );
    }
    println!("{}", r.summary());
    println!("report: bascule-controller drill report --config {} {id} --format html --output drill-{id}.html", config.display());
    Ok(if r.passed() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
