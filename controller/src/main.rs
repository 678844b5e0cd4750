use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use bascule_controller::command::{restore, snapshots, verify};
use bascule_controller::config::ControllerConfig;
use bascule_controller::tenant::Tenant;
use bascule_core::keys::Identities;
use clap::{Parser, Subcommand};

/// bascule-controller: verify tenants' encrypted backups on both providers
/// (no key needed) and restore them with the identity a customer hands over.
///
/// Exit status: 0 all good; 1 a problem was found or the command failed.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List a tenant's snapshots: time, sizes, new bytes, presence on each provider.
    Snapshots {
        /// The controller's configuration file (see configs/controller.yaml).
        #[arg(long, short)]
        config: PathBuf,
        /// The tenant's name, as in the configuration.
        #[arg(long)]
        tenant: String,
    },
    /// Check, without any key, that every snapshot is signed by the tenant's
    /// agent, complete and present on both providers.
    Verify {
        /// The controller's configuration file (see configs/controller.yaml).
        #[arg(long, short)]
        config: PathBuf,
        /// The tenant's name, as in the configuration.
        #[arg(long)]
        tenant: String,
        /// Also download every object and check its ciphertext hash.
        #[arg(long)]
        read_data: bool,
    },
    /// Restore a pg_dump snapshot into an existing PostgreSQL database and
    /// compare every table's row count with the export's.
    Restore {
        /// The controller's configuration file (see configs/controller.yaml).
        #[arg(long, short)]
        config: PathBuf,
        /// The tenant's name, as in the configuration.
        #[arg(long)]
        tenant: String,
        /// The customer's age identity file (AGE-SECRET-KEY-1…). Read once,
        /// kept in memory only.
        #[arg(long)]
        identity: PathBuf,
        /// `latest`, a snapshot name, or its short id.
        #[arg(long, default_value = "latest")]
        snapshot: String,
        /// Target database, e.g. `postgres://user@host:5432/db` (it must exist;
        /// the password comes from PGPASSWORD or ~/.pgpass, never the command line).
        #[arg(long)]
        target: String,
    },
}

/// The recovery time objective bascule is held to (DESIGN: 4 hours).
const RTO_TARGET: std::time::Duration = std::time::Duration::from_secs(4 * 3600);

async fn main_inner(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Snapshots { config, tenant } => {
            let cfg = ControllerConfig::load(&config)?;
            let mut t = Tenant::open(&cfg, &config, &tenant)?;
            print!("{}", snapshots::run(&mut t).await?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { config, tenant, read_data } => {
            let cfg = ControllerConfig::load(&config)?;
            let mut t = Tenant::open(&cfg, &config, &tenant)?;
            let r = verify::run(&mut t, read_data, cfg.restore.concurrency).await?;
            for p in &r.problems {
                println!("PROBLEM {p}");
            }
            println!(
                "tenant {tenant}: {} snapshot(s), {} object(s) checked on {} providers{}: {}",
                r.snapshots,
                r.objects_checked,
                t.replicated.replicas.len(),
                if read_data { format!(", {} bytes read and hashed", r.bytes_read) } else { String::new() },
                if r.problems.is_empty() { "OK".to_string() } else { format!("{} problem(s)", r.problems.len()) }
            );
            Ok(if r.problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Restore { config, tenant, identity, snapshot, target } => {
            let cfg = ControllerConfig::load(&config)?;
            let identities = Identities::load(&identity).context("--identity")?;
            let mut t = Tenant::open(&cfg, &config, &tenant)?;
            let req = restore::RestoreRequest {
                snapshot,
                target,
                identities,
                concurrency: cfg.restore.concurrency,
                pg_restore: cfg.restore.pg_restore.clone(),
            };
            let t0 = std::time::Instant::now();
            let r = restore::run(&mut t, req).await?;
            let took = t0.elapsed();
            println!(
                "restored snapshot {} ({} bytes, {} chunks) in {:.1}s; served: {}",
                r.snapshot,
                r.bytes,
                r.chunks,
                r.fetch_and_restore.as_secs_f64(),
                r.served.iter().map(|(p, n)| format!("{p} {n} B")).collect::<Vec<_>>().join(", ")
            );
            for (table, want, got) in &r.mismatches {
                println!(
                    "MISMATCH {table}: {want} rows at export, {} after restore",
                    got.map(|g| g.to_string()).unwrap_or("no table".into())
                );
            }
            println!(
                "row counts: {} table(s), {} row(s): {}",
                r.tables_checked,
                r.rows_checked,
                if r.mismatches.is_empty() { "identical to the export" } else { "DIFFERENT" }
            );
            let age = chrono::Utc::now() - r.recovery_point;
            println!(
                "recovery point: {} (data as of {} min ago); restore and check took {:.1}s against the {} h target: {}",
                r.recovery_point.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                age.num_minutes(),
                took.as_secs_f64(),
                RTO_TARGET.as_secs() / 3600,
                if took < RTO_TARGET && r.mismatches.is_empty() { "within target" } else { "MISSED" }
            );
            Ok(if r.mismatches.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match main_inner(Cli::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
