//! The controller as a fleet: N tenants (default 35,000, about as many as
//! France has communes) with signed HEADs on two Garage providers, watched by
//! one `serve` and then by three replicas sharing a PostgreSQL state. For
//! each: the time until every tenant was read once (all their views in the
//! state), the steady cycle, CPU per cycle, peak memory; with three, the
//! time for the survivors to take over a SIGKILLed replica's tenants, and a
//! scheduled prune of every tenant spread over the replicas.
//! Run it with `./scripts/bench.sh fleet [TENANTS]`.
use std::path::Path;
use std::time::{Duration, Instant};

use bascule_tests::http::{get, metric};
use bascule_tests::{free_port, spawn_serve, write, Garage, KillOnDrop, PgCluster};

const INTERVAL: Duration = Duration::from_secs(10);
const LEASE: Duration = Duration::from_secs(15);

struct Replica {
    name: String,
    base: String,
    proc: Option<KillOnDrop>,
    log: std::path::PathBuf,
}

impl Replica {
    fn pid(&self) -> u32 {
        self.proc.as_ref().expect("running").0.id()
    }
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|r| r.1.split_whitespace().collect()).unwrap_or_default();
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

/// Peak resident memory of a process, in MiB.
fn peak_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok());
    kb.unwrap_or(0.0) / 1024.0
}

/// A count from the state (0 while its schema is not there yet).
fn count(pg: &PgCluster, db: &str, sql: &str) -> usize {
    let o = bascule_tests::run(std::process::Command::new(pg.tool("psql")).args(["-X", "-q", "-A", "-t", "-d", &pg.dsn(db), "-c", sql]));
    String::from_utf8_lossy(&o.stdout).trim().parse().unwrap_or(0)
}

/// The newest cycle's end and duration of a replica.
fn last_cycle(base: &str) -> (f64, f64) {
    let m = get(&format!("{base}/metrics"));
    (metric(&m, "bascule_monitor_last_cycle_timestamp_seconds").unwrap_or(0.0), metric(&m, "bascule_monitor_cycle_seconds").unwrap_or(0.0))
}

/// Waits for a cycle of `base` ending after `after`; returns its end and duration.
fn next_cycle(base: &str, after: f64) -> (f64, f64) {
    let t0 = Instant::now();
    loop {
        let c = last_cycle(base);
        if c.0 > after {
            return c;
        }
        assert!(t0.elapsed() < Duration::from_secs(600), "no monitor cycle on {base}");
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// A cron expression for `minutes` from now, local time, and that time.
fn cron_in(minutes: i64) -> (String, chrono::DateTime<chrono::Local>) {
    use chrono::Timelike;
    let at = chrono::Local::now() + chrono::Duration::minutes(minutes);
    (format!("{} {} * * *", at.minute(), at.hour()), at.with_second(0).unwrap())
}

#[derive(Default)]
struct Row {
    first: f64,
    steady: f64,
    cpu: f64,
    mem: f64,
    takeover: Option<f64>,
    prune: Option<f64>,
}

#[allow(clippy::too_many_lines)]
fn run(n: usize, dir: &Path, pg: &PgCluster, providers: &str, tenants: &str) -> Row {
    let db = format!("state_{n}");
    pg.createdb(&db);
    // the prune comes after the measures of the cycles and the takeover
    let (cron, prune_at) = cron_in(if n > 1 { 15 } else { 24 * 60 - 5 });
    let mut replicas: Vec<Replica> = (1..=n)
        .map(|i| {
            let name = format!("r{i}");
            let port = free_port();
            let cfg = dir.join(format!("{db}-{name}.yaml"));
            write(
                &cfg,
                &format!(
                    "state_dir: {d}/{db}-{name}\nreport_key: {d}/report.key\nstate:\n  postgres: \"{dsn}\"\n  lease: {lease}s\n  replica: {name}\nproviders:\n{providers}tenants:\n{tenants}prune:\n  cron: \"{cron}\"\nserve:\n  listen: 127.0.0.1:{port}\n  interval: {interval}s\n  concurrency: 64\n",
                    d = dir.display(),
                    dsn = pg.dsn(&db),
                    lease = LEASE.as_secs(),
                    interval = INTERVAL.as_secs(),
                ),
            );
            let log = dir.join(format!("{db}-{name}.log"));
            Replica { name, base: format!("http://127.0.0.1:{port}"), proc: Some(spawn_serve(&cfg, &log)), log }
        })
        .collect();
    let t0 = Instant::now();
    // a view is shared as soon as its tenant is held, "not read yet" until its HEADs are
    let views = |pg: &PgCluster| count(pg, &db, "SELECT count(*) FROM monitor_state WHERE view NOT LIKE '%\"not read yet\"%'");
    let total = n_tenants(tenants);
    while views(pg) < total {
        assert!(t0.elapsed() < Duration::from_secs(900), "not every tenant read within 15 min");
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut row = Row { first: t0.elapsed().as_secs_f64(), ..Default::default() };
    println!("  {n} replica(s): every tenant read once {:.1} s after start", row.first);
    // steady: two cycles after the shares settled, per replica; the slowest counts.
    // Not the cycle under way when every view was kept: after its HEADs, it
    // lists each tenant it gained on both providers.
    std::thread::sleep(INTERVAL);
    for r in &replicas {
        let (under_way, _) = next_cycle(&r.base, 0.0);
        let (end, _) = next_cycle(&r.base, under_way);
        let cpu0 = cpu_seconds(r.pid());
        let (end2, took) = next_cycle(&r.base, end);
        let (_, took2) = next_cycle(&r.base, end2);
        let cpu = (cpu_seconds(r.pid()) - cpu0) / 2.0;
        row.steady = row.steady.max(took.max(took2));
        row.cpu = row.cpu.max(cpu);
        row.mem = row.mem.max(peak_mib(r.pid()));
        println!("  {}: steady cycles {took:.2} s, {took2:.2} s; {cpu:.2} CPU s per cycle; peak {:.0} MiB", r.name, peak_mib(r.pid()));
    }
    if n > 1 {
        // SIGKILL the replica that holds the most; time until the survivors watch all of its tenants
        let holders = pg.psql(&db, "SELECT holder FROM leases WHERE kind = 'tenant' GROUP BY holder ORDER BY count(*) DESC LIMIT 1");
        let victim = replicas.iter_mut().find(|r| r.name == holders).expect("a holder");
        let killed = Instant::now();
        drop(victim.proc.take());
        let orphan = format!("SELECT count(*) FROM monitor_state WHERE holder = '{holders}' OR view LIKE '%\"not read yet\"%'");
        let held = format!("SELECT count(*) FROM leases WHERE kind = 'tenant' AND holder = '{holders}'");
        while count(pg, &db, &orphan) > 0 || count(pg, &db, &held) > 0 {
            assert!(killed.elapsed() < Duration::from_secs(300), "the survivors did not take over");
            std::thread::sleep(Duration::from_millis(250));
        }
        row.takeover = Some(killed.elapsed().as_secs_f64());
        println!("  {holders} SIGKILLed: its tenants watched by the survivors {:.1} s later", killed.elapsed().as_secs_f64());
        // the scheduled prune, spread over the survivors
        let wait = (prune_at - chrono::Local::now()).to_std();
        assert!(wait.is_ok(), "the measures took longer than the prune's wait: its start was missed");
        std::thread::sleep(wait.unwrap_or_default());
        let started = Instant::now();
        let live: Vec<&Replica> = replicas.iter().filter(|r| r.proc.is_some()).collect();
        let done = || -> usize {
            live.iter()
                .map(|r| {
                    std::fs::read_to_string(&r.log)
                        .unwrap_or_default()
                        .lines()
                        .filter(|l| l.contains("Scheduled prune done") || l.contains("Scheduled prune failed"))
                        .count()
                })
                .sum()
        };
        let mut last = 0;
        while done() < total {
            let d = done();
            if d != last && d % 5000 < last % 5000 {
                println!("  prune: {d} tenants in {:.0} s", started.elapsed().as_secs_f64());
            }
            last = d;
            assert!(started.elapsed() < Duration::from_secs(3600), "the prune of every tenant took more than an hour ({} done)", done());
            std::thread::sleep(Duration::from_secs(1));
        }
        row.prune = Some(started.elapsed().as_secs_f64());
    }
    row
}

/// The floor of a steady cycle on this machine: every tenant's HEAD on
/// every provider asked once with its entity tag (answered 304), 64 tenants
/// at once as the monitor does, from this process alone. Returns (seconds,
/// this process's CPU seconds).
fn floor(rt: &tokio::runtime::Runtime, providers: &str, names: &[String]) -> (f64, f64) {
    use bascule_core::provider::{Fetched, Provider};
    use futures::StreamExt;
    let built: Vec<Provider> = bascule_tests::providers_of(providers);
    let pass = |tags: Vec<Vec<Option<String>>>| {
        let built = &built;
        let gets = names.iter().zip(tags).map(move |(n, tags)| async move {
            let one = built.iter().zip(tags).map(|(p, tag)| async move {
                match p.tenant(n).get_if_changed("HEAD", tag.as_deref(), 1 << 16).await.expect("a HEAD") {
                    Fetched::Changed { etag, .. } => etag,
                    Fetched::NotModified => tag,
                    Fetched::Absent => panic!("no HEAD for {n}"),
                }
            });
            futures::future::join_all(one).await
        });
        rt.block_on(futures::stream::iter(gets).buffered(64).collect::<Vec<_>>())
    };
    let tags = pass(vec![vec![None; built.len()]; names.len()]);
    let me = std::process::id();
    let (t0, cpu0) = (Instant::now(), cpu_seconds(me));
    pass(tags);
    (t0.elapsed().as_secs_f64(), cpu_seconds(me) - cpu0)
}

fn n_tenants(yaml: &str) -> usize {
    yaml.lines().filter(|l| l.trim_start().starts_with("- { name:")).count()
}

fn main() {
    // bench_fleet [TENANTS] [--only 1|3]
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args.first().filter(|a| !a.starts_with("--")).map(|a| a.parse().expect("tenants")).unwrap_or(35_000);
    let only: Option<usize> = args.iter().position(|a| a == "--only").map(|i| args[i + 1].parse().expect("--only 1 or 3"));
    let dir = bascule_tests::shared_tempdir();
    let pg = PgCluster::start();
    let (ga, gb) = (Garage::start("provider-a"), Garage::start("provider-b"));
    let providers = format!("{}{}", ga.provider_yaml(dir.path(), "fleet"), gb.provider_yaml(dir.path(), "fleet"));
    let key = bascule_core::keys::AgentKey::generate();
    let names: Vec<String> = (0..n).map(|i| format!("commune-{i:05}")).collect();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let t0 = Instant::now();
    bascule_tests::put_heads(&rt, &providers, &names, &key, 7);
    println!("{} signed HEADs written in {:.1} s", 2 * n, t0.elapsed().as_secs_f64());
    let (floor_s, floor_cpu) = floor(&rt, &providers, &names);
    println!("floor: {} conditional GETs in {floor_s:.2} s, {floor_cpu:.2} CPU s (this process alone)", 2 * n);
    let tenants: String = names.iter().map(|t| format!("  - {{ name: {t}, verify_keys: [\"{}\"] }}\n", key.verify_key())).collect();
    let one = if only.is_none_or(|o| o == 1) { run(1, dir.path(), &pg, &providers, &tenants) } else { Row::default() };
    let three = if only.is_none_or(|o| o == 3) { run(3, dir.path(), &pg, &providers, &tenants) } else { Row::default() };
    println!();
    println!(
        "bascule fleet benchmark: {n} tenants × two Garage providers on loopback, PostgreSQL state, interval {} s, lease {} s",
        INTERVAL.as_secs(),
        LEASE.as_secs()
    );
    println!();
    println!("| measure | 1 replica | 3 replicas | target (3 replicas) |");
    println!("|---|---|---|---|");
    println!("| every tenant read once, from start | {:.1} s | {:.1} s | < 60 s |", one.first, three.first);
    println!("| steady cycle (slowest replica) | {:.2} s | {:.2} s | < 5 s |", one.steady, three.steady);
    println!(
        "| floor: every HEAD asked once with its tag, bare client, same concurrency | {floor_s:.2} s | | steady ÷ floor: {:.2} (1), {:.2} (3) |",
        one.steady / floor_s,
        three.steady / floor_s
    );
    println!("| CPU per steady cycle (busiest replica) | {:.2} s | {:.2} s | |", one.cpu, three.cpu);
    println!("| CPU of the bare client for the same requests | {floor_cpu:.2} s | | |");
    println!("| peak memory (largest replica) | {:.0} MiB | {:.0} MiB | < 256 MiB |", one.mem, three.mem);
    println!("| takeover of a SIGKILLed replica's tenants | | {:.1} s | < 30 s |", three.takeover.unwrap_or(f64::NAN));
    println!("| scheduled prune of every tenant, two survivors | | {:.0} s | < 1 h |", three.prune.unwrap_or(f64::NAN));
}
