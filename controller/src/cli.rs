//! The command line: one subcommand per file of [`crate::command`] (each
//! parses its own arguments, flattening the shared ones, and prints its own
//! output).
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::command::{self, ConfigArg, TenantArg};

/// bascule-controller: verify tenants' encrypted backups on both providers
/// (no key needed) and restore them with the identity a customer hands over.
///
/// Exit status: 0 all good; 1 a problem was found or the command failed.
#[derive(Parser)]
#[command(name = "bascule-controller", version, about, long_about)]
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
    /// List a tenant's snapshots: time, sizes, new bytes, presence on each provider.
    Snapshots(TenantArg),
    /// Check, without any key, that every snapshot is signed by the tenant's
    /// agent, complete and present on both providers.
    Verify(command::verify::Args),
    /// The tenant's WAL archive: timelines, segments, presence on each
    /// provider, gaps (no key needed).
    Wal(TenantArg),
    /// Restore a pg_dump snapshot into an existing PostgreSQL database and
    /// compare every table's row count with the export's; or, with `--pitr`,
    /// a whole cluster from a base backup and the WAL archive, to a point in
    /// time; or, with `--output`, write any snapshot's verified byte stream
    /// to a file.
    Restore(command::restore::Args),
    /// The controller service: watches every tenant on both providers,
    /// serves /metrics and the drill API, runs scheduled drills (the
    /// configuration's `serve:` section). Stops on SIGTERM.
    Serve(ConfigArg),
    /// Print the controller's verify key (`ed25519:…`, created with its
    /// signing key on first use): the key that signs drill reports and the
    /// prune's condemned lists. Give it to each agent (`controller_keys`)
    /// and to whoever checks a report.
    VerifyKey(ConfigArg),
    /// A new API token: prints the token (once; give it to its holder) and
    /// the line to add under `serve.tokens` (only its hash is kept).
    Token(command::token::Args),
    /// Make both providers whole: every copy of every object is read and
    /// checked against what signs it, and a missing or damaged copy is
    /// replaced by a good one from the other provider (ciphertext only, no
    /// key). An object with no good copy anywhere is reported, never copied.
    Repair(command::repair::Args),
    /// Apply the tenant's retention on both providers (no key needed):
    /// delete the snapshots the policy no longer keeps, the WAL older than
    /// the PITR window needs, and packs no snapshot references. A pack is
    /// first condemned, and deleted by a prune at least `prune.grace` later
    /// if no snapshot references it again; an export running meanwhile never
    /// loses a pack it uses.
    Prune(command::prune::Args),
    /// The on-site restore tests the tenant's agent ran (`bascule-agent
    /// restore-test`): when, which export, pass or fail, tables and rows
    /// checked. Read from their signed results; no key needed.
    /// Exit status 1 when the newest one failed or a result does not verify.
    RestoreTests(TenantArg),
    /// Signed drill reports: `report verify FILE --key ed25519:…` checks one
    /// offline.
    Report {
        #[command(subcommand)]
        command: command::report::ReportCommand,
    },
    /// Failover drills and restore tests from YAML runbooks.
    Drill {
        #[command(subcommand)]
        command: command::drill::DrillCommand,
    },
    /// A warm standby of the tenant's cluster: built from the newest base
    /// backup, then fed each WAL file from either provider as soon as its
    /// signed record appears, checked, from memory. Run it again on the same
    /// --pgdata after a restart: it picks up where the cluster stands.
    /// Stops on SIGTERM (PostgreSQL keeps running) or once the standby is promoted.
    Standby(command::pitr::standby::Args),
    /// PostgreSQL's restore_command during `restore --pitr` and `standby` (set up by them).
    #[command(hide = true)]
    WalFetch(command::pitr::FetchArgs),
}

/// Runs the command line's command.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Snapshots(a) => command::snapshots::main(a).await,
        Command::Verify(a) => command::verify::main(a).await,
        Command::Wal(a) => command::wal::main(a).await,
        Command::Restore(a) => command::restore::main(a).await,
        Command::Serve(a) => crate::serve::run(a.load()?).await.map(|()| ExitCode::SUCCESS),
        Command::Token(a) => command::token::main(a),
        Command::VerifyKey(a) => {
            println!("{}", a.load()?.report_key()?.verify_key());
            Ok(ExitCode::SUCCESS)
        }
        Command::Repair(a) => command::repair::main(a).await,
        Command::Prune(a) => command::prune::main(a).await,
        Command::RestoreTests(a) => command::restore_tests::main(a).await,
        Command::Drill { command } => command::drill::main(command).await,
        Command::Report { command } => command::report::main(command),
        Command::Standby(a) => command::pitr::standby::main(a).await,
        Command::WalFetch(a) => Ok(ExitCode::from(command::pitr::fetch_client(&a.socket, &a.name, &a.dest, a.standby).await)),
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
