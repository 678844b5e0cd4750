use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use bascule_controller::command::{pitr, restore, snapshots, verify, wal};
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
    /// The tenant's WAL archive: timelines, segments, presence on each
    /// provider, gaps (no key needed).
    Wal {
        /// The controller's configuration file (see configs/controller.yaml).
        #[arg(long, short)]
        config: PathBuf,
        /// The tenant's name, as in the configuration.
        #[arg(long)]
        tenant: String,
    },
    /// Restore a pg_dump snapshot into an existing PostgreSQL database and
    /// compare every table's row count with the export's; or, with `--pitr`,
    /// a whole cluster from a base backup and the WAL archive, to a point in time.
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
        #[arg(long, required_unless_present = "pitr")]
        target: Option<String>,
        /// Point-in-time restore of the whole cluster: the newest base backup
        /// before the target, then WAL replayed up to it (the end of the
        /// archive unless --at or --lsn), then promotion.
        #[arg(long, requires = "pgdata", conflicts_with_all = ["target", "snapshot"])]
        pitr: bool,
        /// PITR: stop at this time (RFC 3339, e.g. 2026-11-22T17:40:00+01:00).
        #[arg(long, requires = "pitr", conflicts_with = "lsn")]
        at: Option<String>,
        /// PITR: stop at this LSN (e.g. 0/3000060).
        #[arg(long, requires = "pitr")]
        lsn: Option<String>,
        /// PITR: the new data directory (must not exist or be empty).
        #[arg(long)]
        pgdata: Option<PathBuf>,
        /// PITR: port of the restored server.
        #[arg(long, default_value_t = 5432)]
        port: u16,
        /// PITR: the account that runs PostgreSQL (default `postgres` when
        /// run as root, else the current one).
        #[arg(long)]
        os_user: Option<String>,
        /// PITR: a superuser of the restored cluster, to read the recovery point.
        #[arg(long, default_value = "postgres")]
        db_user: String,
        /// PITR: stop the server once the recovery point is read (default:
        /// leave it running).
        #[arg(long)]
        stop: bool,
    },
    /// Failover drills and restore tests from YAML runbooks.
    Drill {
        #[command(subcommand)]
        command: DrillCommand,
    },
    /// PostgreSQL's restore_command during `restore --pitr` (set up by it).
    #[command(hide = true)]
    WalFetch {
        #[arg(long)]
        socket: PathBuf,
        name: String,
        dest: PathBuf,
    },
}

#[derive(Subcommand)]
enum DrillCommand {
    /// Validate a runbook completely and print its resolved plan, without
    /// running anything. Secrets are shown by name only.
    Plan {
        /// The runbook (see runbooks/).
        file: PathBuf,
        /// Which steps to show: those of a drill or of a real failover.
        #[arg(long, value_enum, default_value = "drill")]
        mode: ModeArg,
    },
    /// Run a runbook: every step recorded (with each attempt) in the drill
    /// store under the controller's state_dir, and in its audit log.
    Run {
        /// The controller's configuration file (its state_dir holds drills.sqlite).
        #[arg(long, short)]
        config: PathBuf,
        file: PathBuf,
        #[arg(long, value_enum, default_value = "drill")]
        mode: ModeArg,
    },
    /// Check the audit log's hash chain.
    Audit {
        #[arg(long, short)]
        config: PathBuf,
        /// Verify the chain (the only action for now).
        #[arg(long)]
        verify: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ModeArg {
    Drill,
    Failover,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "unknown".into())
}

/// Whether this process runs as root.
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
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
                "tenant {tenant}: {} snapshot(s), {} object(s), {} WAL file(s) checked on {} providers{}: {}",
                r.snapshots,
                r.objects_checked,
                r.wal_files,
                t.replicated.replicas.len(),
                if read_data { format!(", {} bytes read and hashed", r.bytes_read) } else { String::new() },
                if r.problems.is_empty() { "OK".to_string() } else { format!("{} problem(s)", r.problems.len()) }
            );
            Ok(if r.problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Wal { config, tenant } => {
            let cfg = ControllerConfig::load(&config)?;
            let t = Tenant::open(&cfg, &config, &tenant)?;
            let s = wal::scan(&t, false, cfg.restore.concurrency).await;
            print!("{}", wal::render(&tenant, &s));
            Ok(if s.problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Drill { command: DrillCommand::Run { config, file, mode } } => {
            let cfg = ControllerConfig::load(&config)?;
            let loaded = std::sync::Arc::new(bascule_controller::runbook::load(&file)?);
            let missing = bascule_controller::drill::engine::unsupported(&loaded);
            if !missing.is_empty() {
                anyhow::bail!(
                    "{}: these steps' kinds cannot run yet (only shell, sql, http and sleep do): {}",
                    file.display(),
                    missing.join(", ")
                );
            }
            let (mode, mode_name) = match mode {
                ModeArg::Drill => (bascule_controller::runbook::Mode::Drill, "drill"),
                ModeArg::Failover => (bascule_controller::runbook::Mode::Failover, "failover"),
            };
            let mut store = bascule_controller::drill::store::Store::open(&cfg.state_dir.join("drills.sqlite"))?;
            let actor = format!("{}@{}", std::env::var("USER").unwrap_or_else(|_| "unknown".into()), hostname());
            let id = store.create_drill(&loaded, mode_name, &actor, &hostname())?;
            let store = std::sync::Arc::new(std::sync::Mutex::new(store));
            let r = bascule_controller::drill::engine::run(loaded.clone(), mode, id, store.clone(), &actor).await?;
            store.lock().expect("lock").finish_drill(id, &actor, r.passed, r.rto)?;
            for st in r.steps.iter().chain(&r.rollback) {
                println!(
                    "{:<10} {:<24} {:<10} {:>8.1}s  {} attempt(s)  {}",
                    st.stage,
                    st.id,
                    st.kind,
                    st.elapsed.as_secs_f64(),
                    st.attempts,
                    st.outcome.as_str()
                );
            }
            let target = loaded.runbook.targets.rto;
            println!(
                "drill {id} {}: RTO {} against the {} target; took {:.1}s",
                if r.passed { "PASS" } else { "FAIL" },
                r.rto.map(|d| format!("{:.1}s", d.as_secs_f64())).unwrap_or("not measured".into()),
                humantime_serde::re::humantime::format_duration(target),
                r.total.as_secs_f64()
            );
            Ok(if r.passed && r.rto.is_none_or(|d| d <= target) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Drill { command: DrillCommand::Audit { config, verify: _ } } => {
            let cfg = ControllerConfig::load(&config)?;
            let store = bascule_controller::drill::store::Store::open(&cfg.state_dir.join("drills.sqlite"))?;
            match store.verify_audit()? {
                Ok(n) => {
                    println!("audit log: {n} row(s), chain intact");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    println!("AUDIT LOG BROKEN: {e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Drill { command: DrillCommand::Plan { file, mode } } => {
            let loaded = bascule_controller::runbook::load(&file)?;
            let mode = match mode {
                ModeArg::Drill => bascule_controller::runbook::Mode::Drill,
                ModeArg::Failover => bascule_controller::runbook::Mode::Failover,
            };
            print!("{}", bascule_controller::runbook::plan::render(&loaded, mode));
            Ok(ExitCode::SUCCESS)
        }
        Command::WalFetch { socket, name, dest } => Ok(ExitCode::from(pitr::fetch_client(&socket, &name, &dest).await)),
        Command::Restore { config, tenant, identity, pitr: true, at, lsn, pgdata, port, os_user, db_user, stop, .. } => {
            let cfg = ControllerConfig::load(&config)?;
            let identities = Identities::load(&identity).context("--identity")?;
            let t = Tenant::open(&cfg, &config, &tenant)?;
            let target = match (at, lsn) {
                (Some(a), _) => pitr::Target::parse(&a)?,
                (_, Some(l)) => pitr::Target::Lsn(l.parse().map_err(anyhow::Error::msg)?),
                _ => pitr::Target::Latest,
            };
            let req = pitr::PitrRequest {
                target: target.clone(),
                pgdata: pgdata.expect("required by clap"),
                port,
                identities,
                concurrency: cfg.restore.concurrency,
                bindir: cfg.restore.pg_bindir()?,
                os_user: os_user.or_else(|| is_root().then(|| "postgres".to_string())),
                db_user,
                stop,
            };
            let r = pitr::run(t, req).await?;
            println!(
                "restored base backup {} ({} bytes) and {} WAL file(s) ({} bytes), target {target}",
                r.base_backup, r.base_backup_bytes, r.wal_files, r.wal_bytes
            );
            println!(
                "recovery point: last replayed commit {}, LSN {}, now on timeline {}",
                r.last_commit
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                    .unwrap_or("none (no transaction replayed)".into()),
                r.replay_lsn.as_deref().unwrap_or("-"),
                r.timeline
            );
            println!(
                "phases: base backup {:.1}s, WAL replay {:.1}s; total {:.1}s against the {} h target: {}",
                r.fetch_base.as_secs_f64(),
                r.replay.as_secs_f64(),
                r.total.as_secs_f64(),
                RTO_TARGET.as_secs() / 3600,
                if r.total < RTO_TARGET { "within target" } else { "MISSED" }
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Restore { config, tenant, identity, snapshot, target, .. } => {
            let target = target.expect("required by clap");
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
