//! The continuous-archiving benchmark: bascule against the alternatives, on
//! the same cluster, in the same run, as ratios (this machine is shared and
//! noisy). Run it with `./scripts/bench.sh wal`.
//!
//! Prints: pgbench TPS with bascule archiving vs `archive_command=/bin/true`
//! and vs pgBackRest's asynchronous archive-push to two repositories; the
//! archive lag (file handed to `wal-push` → durable on both providers), p50
//! and p99; base backup throughput vs `pg_basebackup | zstd -T2 | age | rclone
//! rcat` to the same two buckets; point-in-time restore time vs pgBackRest's
//! restore of a backup taken at the same moment, replaying the same WAL.
//! PostgreSQL runs with fsync, synchronous commit and full-page writes on.
use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use bascule_tests::bench::{fresh_tenant_config, median, scripted_upload, timed};
use bascule_tests::{bin, ok, run, text, wait_until, Scenario};

const REPS: usize = 3;

fn as_postgres(prog: &str) -> Command {
    if bascule_tests::is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid", "postgres", "--regid", "postgres", "--init-groups", prog]);
        c
    } else {
        Command::new(prog)
    }
}

fn set_archive_command(s: &Scenario, cmd: &str) {
    s.pg.psql("postgres", &format!("ALTER SYSTEM SET archive_command = '{}'", cmd.replace('\'', "''")));
    s.pg.psql("postgres", "SELECT pg_reload_conf()");
    s.switch_wal();
    std::thread::sleep(Duration::from_secs(2));
}

/// Length of each pgbench run (`BENCH_TPS_SECONDS`, default 30).
fn tps_seconds() -> u32 {
    std::env::var("BENCH_TPS_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(30)
}

fn tps(s: &Scenario) -> f64 {
    let o = s.pgbench(tps_seconds()).wait_with_output().unwrap();
    let out = text(&o);
    assert!(o.status.success(), "pgbench: {out}");
    out.lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no tps in {out}"))
}

fn percentile(v: &[i64], p: f64) -> i64 {
    let mut v = v.to_vec();
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Archive lag per WAL file (the later of the two providers), from the
/// daemon's log, for the files archived after `since` (the files pgbench -i
/// wrote before the daemon ran would count their wait for it).
fn lags(log: &str, since: chrono::DateTime<chrono::Utc>) -> Vec<i64> {
    let mut per_file: BTreeMap<String, (u32, i64)> = BTreeMap::new();
    for l in log.lines().filter(|l| l.contains("WAL file durable on provider")) {
        let f = |k: &str| l.split_whitespace().find_map(|w| w.strip_prefix(&format!("{k}="))).map(str::to_string);
        let (Some(wal), Some(lag)) = (f("wal"), f("lag_ms").and_then(|v| v.parse::<i64>().ok())) else { continue };
        let logged = l.split_whitespace().next().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
        if logged.is_none_or(|t| t - chrono::Duration::milliseconds(lag) < since) {
            continue;
        }
        let e = per_file.entry(wal).or_default();
        e.0 += 1;
        e.1 = e.1.max(lag);
    }
    per_file.values().filter(|(n, _)| *n >= 2).map(|(_, l)| *l).collect()
}

/// Values of `key=` on the daemon's log lines containing `what`.
fn log_values(log: &str, what: &str, key: &str) -> Vec<i64> {
    log.lines()
        .filter(|l| l.contains(what))
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix(&format!("{key}="))).and_then(|v| v.parse().ok()))
        .collect()
}

/// What one run measured.
#[derive(Default)]
struct Figures {
    tps_true: f64,
    tps_bascule: f64,
    tps_pgbr: f64,
    lag: Vec<i64>,
    sealed: Vec<i64>,
    prepare_ms: Vec<i64>,
    write_ms: Vec<i64>,
    object_ms: Vec<i64>,
    record_ms: Vec<i64>,
    base_bytes: u64,
    t_base: Duration,
    t_base_pipe: Duration,
    wal_bytes: u64,
    t_pitr: Duration,
    t_pitr_pgbr: Duration,
    pushes: Vec<i64>,
}

/// pgBackRest beside bascule on the same cluster.
struct Both<'a> {
    s: &'a Scenario,
    conf: std::path::PathBuf,
    bascule_cmd: String,
    pgbr_cmd: String,
}

impl Both<'_> {
    fn pgbr(&self, args: &[&str]) -> Command {
        let mut c = as_postgres("pgbackrest");
        c.arg(format!("--config={}", self.conf.display())).arg("--stanza=bench").args(args);
        c
    }
}

fn main() {
    let scale: u32 = std::env::args().nth(1).map(|a| a.parse().expect("scale")).unwrap_or(50);
    // a server that syncs like a production one: with fsync off, gigabytes of
    // dirty pages make every other fsync on the machine (wal-push's) wait
    std::env::set_var("BASCULE_TEST_PG_DURABLE", "1");
    let s = Scenario::start_archiving(100_000);
    eprintln!("bench: pgbench scale {scale}");
    s.pgbench_init(scale);
    s.pg.psql("bench", "VACUUM ANALYZE");
    let both = pgbackrest(&s);
    let _daemon = s.daemon();
    let mut f = Figures::default();
    // BENCH_WAL_PITR_ONLY=1: the point-in-time restores alone, to study them
    if std::env::var_os("BENCH_WAL_PITR_ONLY").is_some_and(|v| v == "1") {
        pitr(&both, &mut f);
        print_pitr(&f);
        return;
    }
    tps_and_lag(&both, &mut f);
    base_backups(&both, &mut f);
    pitr(&both, &mut f);
    pushes(&s, &mut f);
    print_table(scale, &f);
}

/// pgBackRest: two local repositories (it speaks S3 over TLS only, and the
/// providers here are plain-http loopback Garage), encrypted, zstd, async push.
fn pgbackrest(s: &Scenario) -> Both<'_> {
    let d = s.dir.path();
    let conf = d.join("pgbackrest.conf");
    std::fs::write(
        &conf,
        format!(
            "[global]\nrepo1-path={d}/pgbr-repo1\nrepo2-path={d}/pgbr-repo2\nrepo1-cipher-type=aes-256-cbc\nrepo1-cipher-pass=bench-pass-1\n\
             repo2-cipher-type=aes-256-cbc\nrepo2-cipher-pass=bench-pass-2\nrepo1-retention-full=9999999\nrepo2-retention-full=9999999\ncompress-type=zst\narchive-async=y\nspool-path={d}/pgbr-spool\n\
             lock-path={d}/pgbr-lock\nlog-path={d}/pgbr-log\nlog-level-file=off\nlog-level-console=warn\nprocess-max=2\nstart-fast=y\n\
             [bench]\npg1-path={data}\npg1-port={port}\npg1-socket-path={sock}\npg1-user=bascule\n",
            d = d.display(),
            data = s.pg.data_dir().display(),
            port = s.pg.port,
            sock = s.pg.socket_dir().display()
        ),
    )
    .unwrap();
    if bascule_tests::is_root() {
        ok(Command::new("chown").args(["-R", "postgres"]).arg(d));
    }
    let agent = bin("bascule-agent");
    let bascule_cmd = format!("{} wal-push --config {} %p", agent.display(), s.path("agent.yaml").display());
    let pgbr_cmd = format!("pgbackrest --config={} --stanza=bench archive-push %p", conf.display());
    let both = Both { s, conf, bascule_cmd, pgbr_cmd };
    ok(&mut both.pgbr(&["stanza-create"]));
    both
}

/// TPS, modes interleaved; the archive lag of bascule's runs.
fn tps_and_lag(both: &Both, f: &mut Figures) {
    let s = both.s;
    let (bascule_cmd, pgbr_cmd) = (&both.bascule_cmd, &both.pgbr_cmd);
    let tps_start = chrono::Utc::now();
    let mut t: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for _ in 0..REPS {
        for (mode, cmd) in [("/bin/true", "/bin/true"), ("bascule", bascule_cmd.as_str()), ("pgBackRest async", pgbr_cmd.as_str())] {
            set_archive_command(s, cmd);
            eprintln!("bench: pgbench {}s, archive_command = {mode}", tps_seconds());
            t.entry(mode).or_default().push(tps(s));
        }
    }
    let med = |v: &Vec<f64>| {
        let mut v = v.clone();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    (f.tps_true, f.tps_bascule, f.tps_pgbr) = (med(&t["/bin/true"]), med(&t["bascule"]), med(&t["pgBackRest async"]));
    set_archive_command(s, bascule_cmd);
    let last = s.switch_wal();
    s.wait_on_both(&last, Duration::from_secs(300));
    let log = s.daemon_log();
    // kept for a look at the lag's tail
    let kept = std::env::temp_dir().join("bascule-bench-wal-daemon.log");
    if std::fs::write(&kept, &log).is_ok() {
        eprintln!("bench: the daemon's log is in {}", kept.display());
    }
    f.lag = lags(&log, tps_start);
    assert!(!f.lag.is_empty(), "no archive lag in the daemon's log");
    // like the lag, only the files pushed during the pgbench runs (not those waiting for the daemon)
    let since = tps_start.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
    let during: String =
        log.lines().filter(|l| l.split_whitespace().next().is_some_and(|t| t >= since.as_str())).map(|l| format!("{l}\n")).collect();
    f.sealed = log_values(&during, "WAL file sealed", "since_push_ms");
    f.prepare_ms = log_values(&during, "WAL file sealed", "prepare_ms");
    f.write_ms = log_values(&during, "WAL file sealed", "write_ms");
    f.object_ms = log_values(&during, "WAL file uploaded", "object_ms");
    f.record_ms = log_values(&during, "WAL file uploaded", "record_ms");
}

/// Base backup throughput, interleaved; later repetitions to a fresh tenant.
fn base_backups(both: &Both, f: &mut Figures) {
    let s = both.s;
    let agent = bin("bascule-agent");

    let (mut t_bascule, mut t_pipe) = (Vec::new(), Vec::new());
    let mut base_bytes = 0;
    for i in 0..REPS {
        let cfg = if i == 0 { s.path("agent.yaml") } else { fresh_tenant_config(s, &format!("base-rep-{i}")) };
        let (d, out) = timed(
            "bascule base backup",
            as_postgres(agent.to_str().unwrap()).args(["snapshot", "--job", "base", "--config"]).arg(&cfg).env("RUST_LOG", "info"),
        );
        base_bytes = bascule_tests::bench::field(&out, "source_bytes");
        t_bascule.push(d);
        let source = format!("{} -Ft -D - -X none --checkpoint=fast -d '{}'", s.pg.tool("pg_basebackup").display(), s.pg.dsn("postgres"));
        t_pipe.push(scripted_upload(s, "pg_basebackup | zstd | age | rclone rcat ×2", &source, &format!("base{i}.age")));
    }
    (f.t_base, f.t_base_pipe, f.base_bytes) = (median(t_bascule), median(t_pipe), base_bytes);
}

/// PITR: both tools back up now, archive the same WAL, restore to its end.
fn pitr(both: &Both, f: &mut Figures) {
    let s = both.s;
    let d = s.dir.path();
    let (bascule_cmd, pgbr_cmd) = (&both.bascule_cmd, &both.pgbr_cmd);

    set_archive_command(s, &format!("{bascule_cmd} && {pgbr_cmd}"));
    ok(&mut both.pgbr(&["backup", "--type=full", "--repo=1"]));
    let b = run(s.agent(&["snapshot", "--job", "base"]).env("RUST_LOG", "info"));
    assert!(b.status.success(), "{}", text(&b));
    eprintln!("bench: pgbench {}s of WAL to replay", tps_seconds());
    tps(s);
    let last = s.switch_wal();
    s.wait_on_both(&last, Duration::from_secs(300));
    let repo_has = |name: &str| {
        let dir = d.join(format!("pgbr-repo1/archive/bench/15-1/{}", &name[..16]));
        std::fs::read_dir(dir).map(|r| r.flatten().any(|e| e.file_name().to_string_lossy().starts_with(name))).unwrap_or(false)
    };
    wait_until("pgBackRest to archive the last segment", Duration::from_secs(300), || repo_has(&last));

    touch_memory(&s.path("memory-touch"), 2 * bascule_tests::bench::du(&s.pg.data_dir()));
    // interleaved, the order swapped each time: the median of each side
    let reps = pitr_reps();
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for rep in 0..reps {
        let (b, p) = if rep % 2 == 0 {
            let b = pitr_bascule(s, rep, f);
            (b, pitr_pgbackrest(both, rep))
        } else {
            let p = pitr_pgbackrest(both, rep);
            (pitr_bascule(s, rep, f), p)
        };
        eprintln!(
            "bench: PITR rep {rep}: bascule {:.1}s, pgBackRest {:.1}s ({:.2}×)",
            b.as_secs_f64(),
            p.as_secs_f64(),
            b.as_secs_f64() / p.as_secs_f64()
        );
        ours.push(b);
        theirs.push(p);
    }
    (f.t_pitr, f.t_pitr_pgbr) = (median(ours), median(theirs));
}

/// Writes then removes `bytes` of a file, so that the page cache's pages
/// are touched once before any timed restore: in a virtual machine the
/// first write into memory never used costs the host's fault (measured: the
/// kernel's copy into the page cache is 31 % of the machine in the first
/// restore of a run, 2 % in the third), and only the first side timed
/// would pay it.
fn touch_memory(path: &std::path::Path, bytes: u64) {
    let block = vec![1u8; 1 << 20];
    let mut f = std::fs::File::create(path).unwrap();
    for _ in 0..bytes.div_ceil(1 << 20) {
        std::io::Write::write_all(&mut f, &block).unwrap();
    }
    drop(f);
    std::fs::remove_file(path).unwrap();
}

fn pitr_reps() -> usize {
    std::env::var("BENCH_PITR_REPS").ok().and_then(|v| v.parse().ok()).unwrap_or(3)
}

/// One `restore --pitr` to the end of the archive, timed to the promotion.
fn pitr_bascule(s: &Scenario, rep: usize, f: &mut Figures) -> Duration {
    let port = bascule_tests::free_port();
    let restored = s.path(&format!("pitr-bascule-{rep}"));
    let (t_pitr, out) = timed(
        "bascule restore --pitr (end of the archive)",
        // timed to the promotion, as pgBackRest's below: the shutdown checkpoint is neither's
        s.controller(&["restore", "--pitr", "--db-user", "bascule", "--port", &port.to_string()])
            .arg("--identity")
            .arg(s.path("customer.key"))
            .arg("--pgdata")
            .arg(&restored),
    );
    eprintln!("{out}");
    ok(&mut s.pg.cmd("pg_ctl", &["-D", restored.to_str().unwrap(), "-m", "fast", "-w", "stop"]));
    std::fs::remove_dir_all(&restored).unwrap();
    // what the restore replayed: `… and 20 WAL file(s) (335544320 bytes) …`
    f.wal_bytes = out
        .split_once("WAL file(s) (")
        .and_then(|(_, rest)| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no WAL replayed in:\n{out}"));
    t_pitr
}

/// pgBackRest's restore to the same target, then its recovery to the promotion.
fn pitr_pgbackrest(both: &Both, rep: usize) -> Duration {
    let s = both.s;
    let port = bascule_tests::free_port();
    let target = s.path(&format!("pitr-pgbr-{rep}"));
    std::fs::create_dir(&target).unwrap();
    if bascule_tests::is_root() {
        ok(Command::new("chown").arg("postgres").arg(&target));
    }
    let t0 = Instant::now();
    ok(&mut both.pgbr(&["--repo=1", &format!("--pg1-path={}", target.display()), "restore"]));
    std::fs::OpenOptions::new()
        .append(true)
        .open(target.join("postgresql.auto.conf"))
        .and_then(|mut f| {
            std::io::Write::write_all(
                &mut f,
                format!("port = {port}\narchive_mode = off\nunix_socket_directories = '{}'\n", target.display()).as_bytes(),
            )
        })
        .unwrap();
    let restored_in = t0.elapsed();
    let log = target.join("recovery.log");
    ok(&mut s.pg.cmd("pg_ctl", &["-D", target.to_str().unwrap(), "-l", log.to_str().unwrap(), "-w", "-t", "3600", "start"]));
    wait_until("pgBackRest's restore to promote", Duration::from_secs(3600), || {
        run(Command::new(s.pg.tool("psql")).args([
            "-X",
            "-A",
            "-t",
            "-h",
            target.to_str().unwrap(),
            "-p",
            &port.to_string(),
            "-U",
            "bascule",
            "-d",
            "postgres",
            "-c",
            "SELECT pg_is_in_recovery()",
        ]))
        .stdout
        .starts_with(b"f")
    });
    let total = t0.elapsed();
    eprintln!(
        "bench: pgBackRest phases: restore {:.1}s, start and WAL replay {:.1}s",
        restored_in.as_secs_f64(),
        (total - restored_in).as_secs_f64()
    );
    ok(&mut s.pg.cmd("pg_ctl", &["-D", target.to_str().unwrap(), "-m", "fast", "-w", "stop"]));
    std::fs::remove_dir_all(&target).unwrap();
    total
}

/// `wal-push` alone: what archive_command costs PostgreSQL per 16 MiB segment.
fn pushes(s: &Scenario, f: &mut Figures) {
    let agent = bin("bascule-agent");
    let push_cfg = s.path("push-bench.yaml");
    std::fs::write(
        &push_cfg,
        std::fs::read_to_string(s.path("agent.yaml"))
            .unwrap()
            .replace(&s.spool().display().to_string(), &s.path("push-bench-spool").display().to_string()),
    )
    .unwrap();
    let src = s.path("push-src");
    std::fs::create_dir_all(&src).unwrap();
    let mut segment = vec![0u8; 16 << 20];
    getrandom::getrandom(&mut segment).unwrap();
    let pushes = &mut f.pushes;
    for i in 0..30u32 {
        let f = src.join(format!("0000001000000000{i:08X}"));
        std::fs::write(&f, &segment).unwrap();
        let t0 = Instant::now();
        ok(Command::new(&agent).args(["wal-push", "--config"]).arg(&push_cfg).arg(&f));
        pushes.push(t0.elapsed().as_millis() as i64);
    }
}

fn print_table(scale: u32, f: &Figures) {
    let Figures { tps_true, tps_bascule, tps_pgbr, base_bytes, t_base, t_base_pipe, .. } = *f;
    let (lag, sealed, prepare_ms, write_ms, object_ms, record_ms, pushes) =
        (&f.lag, &f.sealed, &f.prepare_ms, &f.write_ms, &f.object_ms, &f.record_ms, &f.pushes);
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    let mb = |bytes: u64, d: Duration| bytes as f64 / d.as_secs_f64() / 1e6;
    println!("\n## Continuous archiving benchmark (pgbench scale {scale}, {}s runs, medians of {REPS})\n", tps_seconds());
    println!("| measure | bascule | baseline | ratio | target |");
    println!("|---|---|---|---|---|");
    println!(
        "| pgbench TPS, archiving vs `archive_command=/bin/true` | {tps_bascule:.0} | {tps_true:.0} | {:.2}× | ≥ 0.97× |",
        tps_bascule / tps_true
    );
    println!(
        "| pgbench TPS vs pgBackRest 2.45 async archive-push, two repos | {tps_bascule:.0} | {tps_pgbr:.0} | {:.2}× | |",
        tps_bascule / tps_pgbr
    );
    println!(
        "| archive lag, `wal-push` → durable on both providers ({} files archived during the pgbench runs) | p50 {} ms, p99 {} ms | | | p99 ≤ 200 ms |",
        lag.len(),
        percentile(lag, 0.5),
        percentile(lag, 0.99)
    );
    println!(
        "| of which: sealed after p50 {} ms (compress, encrypt, sign p50 {} ms; local durable write p50 {} ms); one provider's PUT of the file p50 {} ms, of its record p50 {} ms | | | | |",
        percentile(sealed, 0.5),
        percentile(prepare_ms, 0.5),
        percentile(write_ms, 0.5),
        percentile(object_ms, 0.5),
        percentile(record_ms, 0.5)
    );
    println!(
        "| `wal-push` of a 16 MiB segment (copy, fsync, rename; process start included) | p50 {} ms, p99 {} ms | | | milliseconds |",
        percentile(pushes, 0.5),
        percentile(pushes, 0.99)
    );
    println!(
        "| base backup ({} MB) throughput vs `pg_basebackup | zstd -T2 | age | rclone rcat` ×2 | {:.0} MB/s | {:.0} MB/s | {:.2}× | ≥ 1.0× |",
        base_bytes / 1_000_000,
        mb(base_bytes, t_base),
        mb(base_bytes, t_base_pipe),
        ratio(t_base_pipe, t_base)
    );
    print_pitr(f);
}

fn print_pitr(f: &Figures) {
    println!(
        "| PITR restore to the end of the archive (base + {} MB of WAL replayed) vs pgBackRest restore + replay, median of {} interleaved | {:.1} s | {:.1} s | {:.2}× | ≤ 1.0× |",
        f.wal_bytes >> 20,
        pitr_reps(),
        f.t_pitr.as_secs_f64(),
        f.t_pitr_pgbr.as_secs_f64(),
        f.t_pitr.as_secs_f64() / f.t_pitr_pgbr.as_secs_f64()
    );
}
