//! Continuous archiving: WAL through `wal-push` to both providers, base
//! backups, and point-in-time restores. Real PostgreSQL, two Garage servers.
use std::process::Command;
use std::time::Duration;

use bascule_tests::{ok, run, text, Scenario};

const MINUTE: Duration = Duration::from_secs(60);

fn markers(s: &Scenario, n: u32) -> Vec<String> {
    s.pg.psql("mairie", "CREATE TABLE markers (n int PRIMARY KEY, at timestamptz NOT NULL)");
    let mut times = Vec::new();
    for i in 1..=n {
        // one transaction per marker, one second apart
        times.push(s.pg.psql("mairie", &format!("INSERT INTO markers VALUES ({i}, clock_timestamp()) RETURNING to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")));
        std::thread::sleep(Duration::from_secs(1));
    }
    times
}

#[test]
fn point_in_time_restore_stops_between_two_markers() {
    let s = Scenario::start_archiving(2_000);
    let _daemon = s.daemon();
    bascule_tests::wait_until("the first heartbeat", MINUTE, || {
        s.pg.psql("mairie", "SELECT count(*) FROM pg_tables WHERE schemaname = 'bascule'") == "1"
    });
    let nightly = s.snapshot();
    assert!(nightly.status.success(), "{}", text(&nightly));
    let b = s.agent(&["snapshot", "--job", "base"]).env("RUST_LOG", "info").output().unwrap();
    assert!(b.status.success(), "base backup failed:\n{}", text(&b));
    let times = markers(&s, 6);
    let last = s.switch_wal();
    s.wait_on_both(&last, MINUTE);

    // halfway between marker 3 and marker 4
    let t3 = chrono::DateTime::parse_from_rfc3339(&times[2]).unwrap();
    let target = (t3 + chrono::Duration::milliseconds(500)).to_rfc3339();
    let (out, restored) = s.pitr("at-marker-3", &["--at", &target]);
    assert_eq!(restored("SELECT string_agg(n::text, ',' ORDER BY n) FROM markers"), "1,2,3", "{out}");
    assert!(out.contains("recovery point: last replayed commit"), "{out}");
    assert!(out.contains("within target"), "{out}");
    // the heartbeat measures the recovery point from the data: its newest
    // row is before the target, and less than a few beats before it
    let beat = restored("SELECT extract(epoch FROM at)::float8 FROM bascule.heartbeat");
    let beat: f64 = beat.parse().unwrap_or_else(|_| panic!("no heartbeat row in the restored cluster: {beat:?}"));
    let target_s = chrono::DateTime::parse_from_rfc3339(&target).unwrap().timestamp_millis() as f64 / 1000.0;
    assert!(beat <= target_s && beat > target_s - 5.0, "heartbeat at {beat}, target {target_s}");
    // the restored cluster is promoted: it takes writes
    restored("INSERT INTO markers VALUES (100, now())");

    // HEAD now names the base backup; an export restore of `latest` takes the newest export
    let r = s.restore("latest", "from_export", &s.path("customer.key"));
    assert!(r.status.success(), "{}", text(&r));
    assert!(text(&r).contains(&Scenario::snapshot_name(&nightly)), "{}", text(&r));

    // the end of the archive: every marker
    let (out, restored) = s.pitr("latest", &[]);
    assert_eq!(restored("SELECT string_agg(n::text, ',' ORDER BY n) FROM markers"), "1,2,3,4,5,6", "{out}");
    // the WAL spool is gone, and every file unpacked belongs to the server's account
    let pgdata = s.path("latest");
    assert!(!pgdata.join("bascule-wal-spool").exists(), "the WAL spool outlived the restore");
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&pgdata).unwrap());
    let mut stack = vec![pgdata];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let m = e.path().symlink_metadata().unwrap();
            assert_eq!(std::os::unix::fs::MetadataExt::uid(&m), owner, "{} is not the server's", e.path().display());
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
}

/// `verify` and `wal` both succeed and report no problem.
fn assert_archive_clean(s: &Scenario, read_data: bool) -> String {
    let args: &[&str] = if read_data { &["verify", "--read-data"] } else { &["verify"] };
    let v = run(&mut s.controller(args));
    assert!(v.status.success(), "verify found problems:\n{}", text(&v));
    let w = run(&mut s.controller(&["wal"]));
    assert!(w.status.success() && !text(&w).contains("PROBLEM"), "wal listing:\n{}", text(&w));
    text(&w)
}

/// Every file PostgreSQL archived since `first` is on both providers.
fn assert_all_archived_on_both(s: &Scenario, first: &str, last: &str) {
    let (a, b) = (s.wal_on(&s.a), s.wal_on(&s.b));
    let segments: Vec<&String> = a.iter().filter(|n| n.len() == 24 && n.as_str() >= first && n.as_str() <= last).collect();
    assert!(!segments.is_empty(), "no segment between {first} and {last} on provider A: {a:?}");
    assert_eq!(a, b, "both providers hold the same WAL files");
    // contiguous: as many segments as positions from first to last
    let pos = |n: &str| u64::from_str_radix(&n[8..16], 16).unwrap() * 256 + u64::from_str_radix(&n[16..24], 16).unwrap();
    assert_eq!(segments.len() as u64, pos(last) - pos(first) + 1, "a segment is missing between {first} and {last}: {segments:?}");
}

#[test]
fn pgbench_load_reaches_both_providers_without_gaps() {
    let s = Scenario::start_archiving(200);
    s.pgbench_init(5);
    let first = s.switch_wal();
    let _daemon = s.daemon();
    let bench = s.pgbench(60).wait_with_output().unwrap();
    assert!(bench.status.success(), "pgbench: {}", text(&bench));
    let last = s.switch_wal();
    s.wait_on_both(&last, MINUTE);
    let arch = s.archiver();
    assert_eq!(arch.failed, 0, "archive_command never failed");
    assert_all_archived_on_both(&s, &first, &last);
    let listing = assert_archive_clean(&s, false);
    assert!(listing.contains("timeline 1:"), "{listing}");
    let t0 = std::time::Instant::now();
    while s.spool_files() > 0 {
        // what is left, and what the daemon said, if it never drains
        let left: Vec<String> = [s.spool(), s.spool().join(".sealed")]
            .iter()
            .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten().map(|e| e.path().display().to_string()))
            .collect();
        let log = s.daemon_log();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        assert!(t0.elapsed() < 2 * MINUTE, "the spool did not drain: {left:#?}\ndaemon log (newest first):\n{}", tail.join("\n"));
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_provider_down_under_load_never_blocks_postgres_and_catches_up() {
    let mut s = Scenario::start_archiving(200);
    s.pgbench_init(5);
    let first = s.switch_wal();
    let _daemon = s.daemon();
    let bench = s.pgbench(45);
    std::thread::sleep(Duration::from_secs(5));
    s.b.stop();
    // while B is down, A keeps up: a segment ended now reaches A
    std::thread::sleep(Duration::from_secs(10));
    let during = s.switch_wal();
    bascule_tests::wait_until("A to hold the segment ended while B is down", MINUTE, || s.wal_on(&s.a).contains(&during));
    std::thread::sleep(Duration::from_secs(20));
    s.b.restart();
    let bench = bench.wait_with_output().unwrap();
    assert!(bench.status.success(), "pgbench: {}", text(&bench));
    let last = s.switch_wal();
    s.wait_on_both(&last, 2 * MINUTE);
    assert_eq!(s.archiver().failed, 0, "PostgreSQL's archiving never failed while B was down");
    assert_all_archived_on_both(&s, &first, &last);
    assert_archive_clean(&s, false);
    assert!(s.daemon_log().contains("WAL upload failed"), "the outage was seen:\n{}", s.daemon_log());
}

#[test]
fn a_daemon_killed_while_uploading_loses_nothing_and_stores_nothing_twice() {
    let s = Scenario::start_archiving(200);
    // a thin uplink, so that the kill lands in the middle of uploads
    s.write_configs("  max_bandwidth: 1MiB\n");
    s.pg.psql("mairie", "CREATE TABLE filler (id serial, junk text)");
    let first = s.switch_wal();
    let mut daemon = s.daemon();
    let mut last = first.clone();
    for _ in 0..4 {
        // incompressible rows, so that segments are big once sealed
        s.pg.psql("mairie", "INSERT INTO filler (junk) SELECT md5(random()::text) || md5(random()::text) FROM generate_series(1, 60000)");
        last = s.switch_wal();
    }
    bascule_tests::wait_until("some WAL to reach a provider", MINUTE, || !s.wal_on(&s.a).is_empty() || !s.wal_on(&s.b).is_empty());
    assert!(s.spool_files() > 0, "uploads still pending when the agent is killed");
    daemon.0.kill().unwrap();
    daemon.0.wait().unwrap();
    let before_restart = (s.wal_on(&s.a).len(), s.wal_on(&s.b).len());
    s.write_configs("");
    let _daemon = s.daemon();
    s.wait_on_both(&last, 2 * MINUTE);
    assert!(
        before_restart.0 < s.wal_on(&s.a).len() || before_restart.1 < s.wal_on(&s.b).len(),
        "the restarted daemon finished the uploads"
    );
    assert_all_archived_on_both(&s, &first, &last);
    // every copy's ciphertext matches its signed record, and both providers' records agree
    assert_archive_clean(&s, true);
}

#[test]
fn a_full_spool_fails_wal_push_then_postgres_retries_and_nothing_is_lost() {
    let s = Scenario::start_archiving(200);
    assert!(bascule_tests::is_root(), "this test mounts a small tmpfs for the spool: run it as root (CI does)");
    std::fs::create_dir_all(s.spool()).unwrap();
    ok(Command::new("mount").args(["-t", "tmpfs", "-o", "size=40m,mode=0755", "tmpfs"]).arg(s.spool()));
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(s.spool());
    ok(Command::new("chown").arg("postgres").arg(s.spool()));
    let first = s.switch_wal();
    // no daemon yet: nothing leaves the spool, which fills after two segments
    s.pg.psql("mairie", "CREATE TABLE filler (id serial, junk text)");
    for _ in 0..4 {
        s.pg.psql("mairie", "INSERT INTO filler (junk) SELECT md5(random()::text) FROM generate_series(1, 100000)");
        s.switch_wal();
    }
    bascule_tests::wait_until("archive_command to fail", MINUTE, || s.archiver().failed > 0);
    assert!(s.pg.log().contains("file system is full"), "wal-push says why:\n{}", s.pg.log());
    let stuck = s.archiver();
    // space returns: the daemon ships and empties the spool; PostgreSQL retries
    let _daemon = s.daemon();
    let last = s.switch_wal();
    s.wait_on_both(&last, 3 * MINUTE);
    assert!(s.archiver().archived > stuck.archived);
    assert_all_archived_on_both(&s, &first, &last);
    assert_archive_clean(&s, false);
}

#[test]
fn verify_names_a_gap_a_forged_record_and_a_copy_missing_on_one_provider() {
    let s = Scenario::start_archiving(200);
    let _daemon = s.daemon();
    let mut names = Vec::new();
    for _ in 0..4 {
        names.push(s.switch_wal());
    }
    s.wait_on_both(names.last().unwrap(), MINUTE);
    assert_archive_clean(&s, true);
    // an idle daemon sleeps: its own reads of the spool must not wake it
    let ticks = |pid: u32| -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    };
    let before = ticks(_daemon.0.id());
    std::thread::sleep(Duration::from_secs(3));
    let used = ticks(_daemon.0.id()) - before;
    assert!(used < 30, "an idle daemon used {used} CPU ticks in 3 s");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let w = |n: &str| bascule_core::wal::WalName::parse(n).unwrap();
    let (a, b) = (s.provider(&s.a), s.provider(&s.b));
    rt.block_on(async {
        // a segment gone from both providers: a gap
        for p in [&a, &b] {
            p.delete(&w(&names[1]).record_key()).await.unwrap();
            p.delete(&w(&names[1]).object_key()).await.unwrap();
        }
        // a record re-signed by another key on A: refused
        let other = bascule_core::keys::AgentKey::generate();
        let rec = a.get(&w(&names[2]).record_key(), u64::MAX).await.unwrap().unwrap();
        let body: bascule_core::wal::WalRecord =
            serde_json::from_slice(&rec[rec.windows(2).position(|x| x == b"\n\n").unwrap() + 2..]).unwrap();
        let forged = bascule_core::signed::sign(bascule_core::signed::Kind::Wal, &body, &other);
        a.put(&w(&names[2]).record_key(), forged.into()).await.unwrap();
        // a file missing on B only
        b.delete(&w(&names[3]).object_key()).await.unwrap();
    });
    let v = run(&mut s.controller(&["verify"]));
    let out = text(&v);
    assert!(!v.status.success(), "{out}");
    assert!(out.contains(&format!("gap on timeline 1: 1 segment(s) missing after {}", names[0])), "{out}");
    assert!(out.contains(&format!("provider provider-a: {}: refused", w(&names[2]).record_key())), "{out}");
    assert!(out.contains(&format!("provider provider-b: {}: record present but its file is missing", w(&names[3]).record_key())), "{out}");
}
