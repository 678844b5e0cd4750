use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use bascule_controller::command::{pitr, restore, snapshots, verify, wal};
use bascule_controller::config::ControllerConfig;
use bascule_controller::drill::store::Store;
use bascule_controller::drill::{self, report};
use bascule_controller::is_root;
use bascule_controller::runbook::{self, Loaded, Mode};
use bascule_controller::tenant::Tenant;
use bascule_core::keys::Identities;
use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::sync::Arc;

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
        /// Read back only slice N of M (objects chosen by the hash of their
        /// key), e.g. `3/100`: what the scheduled verify of `serve` does daily.
        #[arg(long, value_name = "N/M", conflicts_with = "read_data")]
        sample: Option<String>,
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
    /// a whole cluster from a base backup and the WAL archive, to a point in
    /// time; or, with `--output`, write any snapshot's verified byte stream
    /// to a file.
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
        #[arg(long, required_unless_present_any = ["pitr", "output"])]
        target: Option<String>,
        /// Write the snapshot's byte stream (a `pg_dump -Fc` file, or what a
        /// `command` source printed) to this new file instead, mode 0600. It
        /// is written to FILE.partial and renamed only once the whole stream
        /// has matched the hash recorded at export. The data is then in clear
        /// on this machine: remove the file when done.
        #[arg(long, conflicts_with_all = ["target", "pitr"])]
        output: Option<PathBuf>,
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
    /// The controller service: watches every tenant on both providers,
    /// serves /metrics and the drill API, runs scheduled drills (the
    /// configuration's `serve:` section). Stops on SIGTERM.
    Serve {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// A new API token: prints the token (once; give it to its holder) and
    /// the line to add under `serve.tokens` (only its hash is kept).
    Token {
        /// Who holds it, as the audit log will name it.
        #[arg(long)]
        name: String,
        #[arg(long, value_enum)]
        role: RoleArg,
    },
    /// Make both providers whole: every copy of every object is read and
    /// checked against what signs it, and a missing or damaged copy is
    /// replaced by a good one from the other provider (ciphertext only, no
    /// key). An object with no good copy anywhere is reported, never copied.
    Repair {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        tenant: String,
        /// Say what would be copied; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Apply the tenant's retention on both providers (no key needed):
    /// delete the snapshots the policy no longer keeps, the WAL older than
    /// the PITR window needs, and packs no snapshot references. A pack is
    /// first condemned, and deleted by a prune at least `prune.grace` later
    /// if no snapshot references it again; an export running meanwhile never
    /// loses a pack it uses.
    Prune {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        tenant: String,
        /// Print what would go and the bytes freed; delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// The on-site restore tests the tenant's agent ran (`bascule-agent
    /// restore-test`): when, which export, pass or fail, tables and rows
    /// checked. Read from their signed results; no key needed.
    /// Exit status 1 when the newest one failed or a result does not verify.
    RestoreTests {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        tenant: String,
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
        #[arg(long, short)]
        config: PathBuf,
        /// The drill's number (`drill list`).
        id: i64,
    },
    /// Stop an unfinished drill for good: run its rollback (`on_failure`)
    /// steps that have not run, and record it as aborted.
    Abort {
        #[arg(long, short)]
        config: PathBuf,
        id: i64,
    },
    /// Answer a drill's approval step (from any terminal that reaches the
    /// drill store); the answer and who gave it go to the audit log.
    Approve {
        #[arg(long, short)]
        config: PathBuf,
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
        #[arg(long, short)]
        config: PathBuf,
    },
    /// A drill's report: the verdict, RTO and RPO against their targets,
    /// every step; HTML is one self-contained page with a timeline.
    Report {
        #[arg(long, short)]
        config: PathBuf,
        id: i64,
        #[arg(long, value_enum, default_value = "md")]
        format: ReportFormat,
        /// Write it to this file instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
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
enum RoleArg {
    Viewer,
    Operator,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ReportFormat {
    Json,
    Md,
    Html,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ModeArg {
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

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "unknown".into())
}

/// `user@host` of whoever runs this process, for the audit log.
fn actor() -> String {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    let from_passwd = uid.and_then(|uid| {
        std::fs::read_to_string("/etc/passwd").ok()?.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 2 && f[2].parse() == Ok(uid)).then(|| f[0].to_string())
        })
    });
    let user =
        from_passwd.or_else(|| std::env::var("USER").ok()).unwrap_or_else(|| uid.map(|u| format!("uid {u}")).unwrap_or("unknown".into()));
    format!("{user}@{}", hostname())
}

/// `NAME=VALUE` pairs, each naming one of the runbook's variables.
fn parse_vars(l: &Loaded, vars: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    vars.iter()
        .map(|v| {
            let (k, val) = v.split_once('=').with_context(|| format!("--var {v:?}: expected NAME=VALUE"))?;
            if !l.runbook.variables.contains_key(k) {
                let known: Vec<&str> = l.runbook.variables.keys().map(String::as_str).collect();
                anyhow::bail!("--var {k}: {} has no such variable (it has: {})", l.file.display(), known.join(", "));
            }
            Ok((k.to_string(), val.to_string()))
        })
        .collect()
}

fn open_store(cfg: &ControllerConfig) -> anyhow::Result<Store> {
    Store::open(&cfg.drill_store())
}

async fn drill_command(command: DrillCommand) -> anyhow::Result<ExitCode> {
    match command {
        DrillCommand::Plan { file, mode, vars } => {
            let mut loaded = runbook::load(&file)?;
            let vars = parse_vars(&loaded, &vars)?;
            loaded.runbook.variables.extend(vars);
            print!("{}", runbook::plan::render(&loaded, mode.mode()));
            Ok(ExitCode::SUCCESS)
        }
        DrillCommand::Run { config, file, mode, vars } => {
            let cfg = ControllerConfig::load(&config)?;
            let loaded = Arc::new(runbook::load(&file)?);
            let vars = parse_vars(&loaded, &vars)?;
            let mode_name = match mode {
                ModeArg::Drill => "drill",
                ModeArg::Failover => "failover",
            };
            // the report key exists before anything runs
            cfg.report_key()?;
            let mut store = open_store(&cfg)?;
            let actor = actor();
            let id = store.create_drill(&loaded, mode_name, &actor, &hostname())?;
            for (k, v) in &vars {
                store.set_variable(id, k, v)?;
            }
            eprintln!("drill {id}: {} ({mode_name}), runbook {}", loaded.runbook.name, file.display());
            let lock = drill::lock(&cfg, id)?;
            execute(cfg, config, loaded, mode.mode(), id, store, actor, false, lock).await
        }
        DrillCommand::Resume { config, id } => continue_drill(config, id, false).await,
        DrillCommand::Abort { config, id } => continue_drill(config, id, true).await,
        DrillCommand::Approve { config, id, step, reject } => {
            let cfg = ControllerConfig::load(&config)?;
            let mut store = open_store(&cfg)?;
            let d = store.drill(id)?;
            if d.finished() {
                anyhow::bail!("drill {id} is over ({})", d.status);
            }
            let l = runbook::load(std::path::Path::new(&d.runbook_file))?;
            if !l.steps().iter().any(|(_, s)| s.id == step && s.approval.is_some()) {
                anyhow::bail!("drill {id}: {} has no approval step {step:?}", d.runbook_file);
            }
            if store.answer(id, &step, !reject, &actor())? {
                println!("drill {id}, step {step}: {}", if reject { "rejected" } else { "approved" });
                Ok(ExitCode::SUCCESS)
            } else {
                let (approved, who) = store.approval(id, &step)?.expect("answered");
                anyhow::bail!("drill {id}, step {step}: already {} by {who}", if approved { "approved" } else { "rejected" })
            }
        }
        DrillCommand::List { config } => {
            let cfg = ControllerConfig::load(&config)?;
            let store = open_store(&cfg)?;
            println!("{:>5}  {:<20} {:<8} {:<20} {:<13} {:>10} {:>10}", "id", "runbook", "mode", "started", "status", "RTO", "RPO");
            for d in store.drills()? {
                let status = if !d.finished() && !drill::is_running(&cfg, d.id) { "interrupted".to_string() } else { d.status.clone() };
                let f = |v: Option<std::time::Duration>| v.map(|v| format!("{:.1}s", v.as_secs_f64())).unwrap_or("-".into());
                println!(
                    "{:>5}  {:<20} {:<8} {:<20} {:<13} {:>10} {:>10}",
                    d.id,
                    d.runbook,
                    d.mode,
                    d.started_at.format("%Y-%m-%d %H:%M:%S"),
                    status,
                    f(d.measures.rto),
                    f(d.measures.rpo)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        DrillCommand::Report { config, id, format, output } => {
            let cfg = ControllerConfig::load(&config)?;
            let store = open_store(&cfg)?;
            let r = report::build(&store, id)?;
            let text = match format {
                ReportFormat::Json => serde_json::to_string_pretty(&r)? + "\n",
                ReportFormat::Md => report::markdown(&r),
                ReportFormat::Html => report::html(&r),
            };
            match output {
                Some(p) => std::fs::write(&p, text).with_context(|| p.display().to_string())?,
                None => print!("{text}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        DrillCommand::Audit { config, verify: _ } => {
            let cfg = ControllerConfig::load(&config)?;
            match open_store(&cfg)?.verify_audit()? {
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
    }
}

/// `drill resume` and `drill abort`.
async fn continue_drill(config: PathBuf, id: i64, abort: bool) -> anyhow::Result<ExitCode> {
    let cfg = ControllerConfig::load(&config)?;
    let store = open_store(&cfg)?;
    let d = store.drill(id)?;
    if d.finished() {
        anyhow::bail!("drill {id} is over ({}); see `drill report {id}`", d.status);
    }
    let lock = drill::lock(&cfg, id)?;
    let file = PathBuf::from(&d.runbook_file);
    let loaded = Arc::new(runbook::load(&file)?);
    if loaded.hash != d.runbook_hash {
        anyhow::bail!(
            "{} changed since drill {id} started (sha {} then, {} now): resume needs the runbook it started with",
            file.display(),
            &d.runbook_hash[..16],
            &loaded.hash[..16]
        );
    }
    let mode = if d.mode == "failover" { Mode::Failover } else { Mode::Drill };
    let actor = actor();
    let mut store = store;
    store.audit(Some(id), &actor, if abort { "drill-abort" } else { "drill-resume" }, &format!("was {}", d.status))?;
    let done = store.steps(id)?.len();
    eprintln!("drill {id}: {} {} ({} step(s) had ended)", if abort { "aborting" } else { "resuming" }, d.runbook, done);
    execute(cfg, config, loaded, mode, id, store, actor, abort, lock).await
}

/// Runs (or continues) drill `id`, then prints its steps and summary.
#[allow(clippy::too_many_arguments)]
async fn execute(
    cfg: ControllerConfig,
    config: PathBuf,
    loaded: Arc<Loaded>,
    mode: Mode,
    id: i64,
    store: Store,
    actor: String,
    abort: bool,
    lock: std::fs::File,
) -> anyhow::Result<ExitCode> {
    let interactive = std::io::stdin().is_terminal();
    let r = drill::run_and_report(Arc::new(cfg), config.clone(), loaded, mode, id, store, actor, abort, interactive, lock).await?;
    for s in &r.steps {
        println!("{:<12} {:<26} {:<16} {:>9.1}s  {} attempt(s)  {}", s.stage, s.id, s.kind, s.duration_seconds, s.attempts, s.outcome);
    }
    println!("{}", r.summary());
    println!("report: bascule-controller drill report --config {} {id} --format html --output drill-{id}.html", config.display());
    Ok(if r.passed() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
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
        Command::Verify { config, tenant, read_data, sample } => {
            let read_data = match (read_data, sample) {
                (true, _) => verify::ReadData::All,
                (false, Some(s)) => {
                    let parsed = s.split_once('/').and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)));
                    match parsed {
                        Some((slice, slices)) if slices > 0 && slice < slices => verify::ReadData::Sample { slice, slices },
                        _ => anyhow::bail!("--sample {s:?}: expected N/M with N below M, e.g. 3/100"),
                    }
                }
                (false, None) => verify::ReadData::None,
            };
            let cfg = ControllerConfig::load(&config)?;
            let mut t = Tenant::open(&cfg, &config, &tenant)?;
            let r = verify::run(&mut t, read_data, cfg.restore.concurrency).await?;
            for replica in &t.replicated.replicas {
                match replica.protection().await {
                    Ok(p) => println!("bucket of {}: {p}", replica.provider),
                    Err(e) => println!("bucket of {}: versioning and object lock unknown ({e})", replica.provider),
                }
            }
            for p in &r.problems {
                println!("PROBLEM {p}");
            }
            println!(
                "tenant {tenant}: {} snapshot(s), {} object(s), {} WAL file(s) checked on {} providers{}: {}",
                r.snapshots,
                r.objects_checked,
                r.wal_files,
                t.replicated.replicas.len(),
                if read_data.any() { format!(", {} bytes read and hashed", r.bytes_read) } else { String::new() },
                if r.problems.is_empty() { "OK".to_string() } else { format!("{} problem(s)", r.problems.len()) }
            );
            Ok(if r.problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Wal { config, tenant } => {
            let cfg = ControllerConfig::load(&config)?;
            let t = Tenant::open(&cfg, &config, &tenant)?;
            let s = wal::scan(&t, verify::ReadData::None, cfg.restore.concurrency).await;
            print!("{}", wal::render(&tenant, &s));
            Ok(if s.problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Drill { command } => drill_command(command).await,
        Command::Repair { config, tenant, dry_run } => {
            let cfg = ControllerConfig::load(&config)?;
            let t = Tenant::open(&cfg, &config, &tenant)?;
            let r = bascule_controller::command::repair::run(&t, dry_run, cfg.restore.concurrency).await?;
            for (p, k, n, what) in &r.copied {
                println!("{} {p} {k} ({n} B): {what}", if dry_run { "WOULD COPY to" } else { "COPIED to" });
            }
            for (k, why) in &r.unrepairable {
                println!("UNREPAIRABLE {k}: no good copy ({why})");
            }
            for (p, why) in &r.failed {
                println!("FAILED {p}: {why}");
            }
            println!(
                "tenant {tenant}: {} object(s) checked on {} providers; {} copied{}; {} unrepairable: {}",
                r.checked,
                t.replicated.replicas.len(),
                r.copied.len(),
                if dry_run { " (dry run: nothing written)" } else { "" },
                r.unrepairable.len(),
                if r.whole() { "both providers whole" } else { "NOT WHOLE" }
            );
            Ok(if r.whole() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Prune { config, tenant, dry_run } => {
            let cfg = ControllerConfig::load(&config)?;
            let t = Tenant::open(&cfg, &config, &tenant)?;
            let r = bascule_controller::command::prune::run(&cfg, &t, dry_run, chrono::Utc::now()).await?;
            bascule_controller::command::prune::print(&t, &r);
            Ok(if r.failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::RestoreTests { config, tenant } => {
            let cfg = ControllerConfig::load(&config)?;
            let t = Tenant::open(&cfg, &config, &tenant)?;
            let results = bascule_controller::command::restore_tests::list(&t).await?;
            bascule_controller::command::restore_tests::print(&results);
            let newest_ok = results.iter().rev().find_map(|r| r.as_ref().ok()).is_none_or(|r| r.passed);
            Ok(if newest_ok && results.iter().all(|r| r.is_ok()) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Serve { config } => {
            let cfg = ControllerConfig::load(&config)?;
            bascule_controller::serve::run(cfg, config).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Token { name, role } => {
            bascule_core::config::check_name("token name", &name).map_err(anyhow::Error::msg)?;
            let mut secret = [0u8; 32];
            getrandom::getrandom(&mut secret).context("the operating system's random source")?;
            let token = format!("bsc_{}", hex::encode(secret));
            let role = match role {
                RoleArg::Viewer => "viewer",
                RoleArg::Operator => "operator",
            };
            eprintln!("token (shown once; give it to {name}):");
            println!("{token}");
            eprintln!("add under serve.tokens in the controller's configuration:");
            eprintln!("  - {{ name: {name}, role: {role}, hash: \"blake3:{}\" }}", blake3::hash(token.as_bytes()).to_hex());
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
        Command::Restore { config, tenant, identity, snapshot, output: Some(output), .. } => {
            let cfg = ControllerConfig::load(&config)?;
            let identities = Identities::load(&identity).context("--identity")?;
            let mut t = Tenant::open(&cfg, &config, &tenant)?;
            let t0 = std::time::Instant::now();
            let r = restore::extract(&mut t, &snapshot, identities, cfg.restore.concurrency, &output).await?;
            println!(
                "wrote snapshot {} ({} bytes, {} chunks, stream hash verified) to {} in {:.1}s; served: {}",
                r.snapshot,
                r.bytes,
                r.chunks,
                output.display(),
                t0.elapsed().as_secs_f64(),
                r.served.iter().map(|(p, n)| format!("{p} {n} B")).collect::<Vec<_>>().join(", ")
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
