//! The command line of `bascule-agent`: one subcommand each, the
//! configuration argument shared.
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::{schedule, Agent};
use bascule_core::progress::Progress;

/// `--config`, of every command that reads the agent's configuration.
#[derive(clap::Args)]
pub struct ConfigArg {
    /// The agent's configuration file (see configs/agent.yaml).
    #[arg(long, short)]
    pub config: PathBuf,
}

/// bascule-agent: nightly encrypted exports of a PostgreSQL database to two
/// independent providers.
///
/// The dump is cut into content-defined chunks; chunks not stored yet are
/// compressed (zstd) and encrypted (age) to the customer's public key on this
/// machine, in segments packed into objects, and sent to both providers. Only
/// what changed since the last run is sent.
///
/// Exit status: 0 done on both providers; 3 done on one provider only
/// (degraded: the other is caught up by the next run or `sync`); 1 failed.
#[derive(Parser)]
#[command(name = "bascule-agent", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How the log is written on standard error: `auto` (coloured on a
    /// terminal, one plain line per event otherwise), `text`, or `json` (one
    /// object per line, for journald or Loki). `RUST_LOG` chooses what.
    #[arg(long, global = true, default_value = "auto")]
    pub log_format: bascule_core::logging::LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Create the agent key file (signing key + dedup key, mode 0600) and print
    /// its public verify key, to register at the vendor's controller.
    Keygen {
        /// Where to write the key file; an existing file is never overwritten.
        #[arg(long)]
        out: PathBuf,
    },
    /// Create a customer age identity (like `age-keygen`) and print its
    /// recipient (age1…) for the agent's `recipients`. The identity file is
    /// the customer's: keep it off the agent's machine once created.
    NewIdentity {
        #[arg(long)]
        out: PathBuf,
    },
    /// Run one job now.
    Snapshot {
        #[command(flatten)]
        config: ConfigArg,
        /// The job's name in the config.
        #[arg(long)]
        job: String,
        /// Record the snapshot as taken at this time (RFC 3339, e.g.
        /// 2026-01-31T01:30:00Z) instead of now: for importing older dumps
        /// through a `command` source. Retention counts days by this time.
        #[arg(long, value_name = "TIME")]
        time: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// Run the daemon until SIGTERM: every job on its schedule, WAL shipping
    /// (with a `wal:` section) and the heartbeat (with a `heartbeat:` section).
    Run {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// PostgreSQL's `archive_command`: copy one WAL file into the local spool
    /// (durably) and return at once; the daemon (`run`) ships it to both
    /// providers. Never touches the network.
    ///
    /// postgresql.conf: archive_command = 'bascule-agent wal-push --config /etc/bascule/agent.yaml %p'
    WalPush {
        #[command(flatten)]
        config: ConfigArg,
        /// The file to archive (`%p`).
        path: PathBuf,
    },
    /// Prove on site that the newest export restores: fetch it (every byte
    /// checked), restore it with the customer's identity into a scratch
    /// database on the job's server (the job's role needs CREATEDB), compare
    /// every table's row count with the export's, drop the scratch database.
    /// The signed result (digests and counts, no data) goes to both
    /// providers, where the vendor's controller shows it.
    /// Exit status 0 when the test passed, 1 otherwise.
    /// Is my setup right? Proves it end to end now, one line per check (ok,
    /// or what is wrong and how to fix it): the configuration and key file,
    /// each provider (a probe written, read back and deleted; its clock), each
    /// job's source, PostgreSQL's archive_command and a WAL switch reaching
    /// both providers, the heartbeat. Exit status 1 when a check fails.
    Check {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Is my backup working? Each job's last and next run, the newest
    /// snapshot on each provider (from its signed HEAD), the WAL spool, a
    /// provider's backlog, the newest restore test, and what needs attention.
    /// Exit status 0 all is well, 1 something needs attention, 2 could not tell.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// The same as JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    RestoreTest {
        #[command(flatten)]
        config: ConfigArg,
        /// A pg_dump job of the config.
        #[arg(long)]
        job: String,
        /// The customer's age identity file (read once, kept in memory only).
        #[arg(long)]
        identity: PathBuf,
        /// A snapshot name or short id instead of the job's newest export.
        #[arg(long)]
        snapshot: Option<String>,
        /// `pg_restore` to use (default: next to the job's pg_dump, else on PATH).
        #[arg(long)]
        pg_restore: Option<PathBuf>,
    },
    /// Copy to each provider what it lacks (after an outage), from the other.
    Sync {
        #[command(flatten)]
        config: ConfigArg,
    },
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("Shutdown requested");
}

/// Runs the command line's command.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Keygen { out } => {
            let key = bascule_core::keys::AgentKey::generate();
            key.write_new(&out).with_context(|| "cannot write the key file")?;
            eprintln!("wrote {} (keep it secret, keep a copy off this machine)", out.display());
            println!("{}", key.verify_key());
            Ok(ExitCode::SUCCESS)
        }
        Command::NewIdentity { out } => {
            let (ids, recipient) = bascule_core::keys::Identities::generate();
            let text = format!("# created: {}\n# public key: {recipient}\n{}", chrono::Utc::now().to_rfc3339(), ids.to_file_text());
            bascule_core::config::write_new_secret(&out, text.as_bytes())
                .context("cannot create the identity file (an existing file is never overwritten)")?;
            eprintln!("wrote {}: the customer's secret key; store it off this machine", out.display());
            println!("{recipient}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Snapshot { config, job, time } => {
            let agent = Agent::load(&config.config)?;
            let cancel = CancellationToken::new();
            let c = cancel.clone();
            tokio::spawn(async move {
                shutdown_signal().await;
                c.cancel();
            });
            let complete = schedule::run_job(agent, &job, time, cancel, &Progress::bytes(format!("job {job}"), None)).await?;
            Ok(if complete { ExitCode::SUCCESS } else { ExitCode::from(3) })
        }
        Command::Run { config } => {
            let agent = Agent::load(&config.config)?;
            schedule::run_daemon(agent, shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::WalPush { config, path } => {
            let cfg = crate::config::AgentConfig::load(&config.config)?;
            let spool = crate::wal::Spool::open(&cfg.spool_dir()?)?;
            if spool.push(&path)? == crate::wal::Pushed::AlreadyThere {
                eprintln!("{}: already archived with the same content", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config } => {
            let agent = match Agent::load(&config.config) {
                Ok(a) => a,
                Err(e) => {
                    println!("FAILED  configuration: {}", bascule_core::logging::one_line(e.chain()));
                    return Ok(ExitCode::FAILURE);
                }
            };
            let lines = crate::check::run(&agent).await;
            for l in &lines {
                println!("{l}");
            }
            let failed = lines.iter().filter(|l| l.result.is_err()).count();
            println!("{} check(s), {failed} failed", lines.len());
            Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Status { config, json } => {
            let agent = match Agent::load(&config.config) {
                Ok(a) => a,
                Err(e) => {
                    println!("CANNOT TELL: {}", bascule_core::logging::one_line(e.chain()));
                    return Ok(ExitCode::from(2));
                }
            };
            let s = crate::status::gather(&agent).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{}", crate::status::render(&s));
            }
            Ok(ExitCode::from(if s.unknown {
                2
            } else if s.attention.is_empty() {
                0
            } else {
                1
            }))
        }
        Command::RestoreTest { config, job, identity, snapshot, pg_restore } => {
            let agent = Agent::load(&config.config)?;
            let opts = crate::restore_test::Options { identity, snapshot, pg_restore };
            let r = crate::restore_test::run(agent, &job, opts).await?;
            crate::restore_test::print(&r);
            Ok(if r.passed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Sync { config } => {
            let agent = Agent::load(&config.config)?;
            let report = agent.sync().await?;
            let bytes: u64 = report.copied.iter().map(|c| c.2).sum();
            for (k, why) in &report.skipped {
                println!("SKIPPED {k}: {why}");
            }
            for (p, why) in &report.failed {
                println!("INCOMPLETE {p}: {why}");
            }
            println!("copied {} object(s), {bytes} bytes", report.copied.len());
            Ok(if report.complete() { ExitCode::SUCCESS } else { ExitCode::from(3) })
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
