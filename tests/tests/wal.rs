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
    let b = s.agent(&["snapshot", "--job", "base"]).env("RUST_LOG", "info").output().unwrap();
    assert!(b.status.success(), "base backup failed:\n{}", text(&b));
    let times = markers(&s, 6);
    let last = s.switch_wal();
    s.wait_on_both(&last, MINUTE);

    // halfway between marker 3 and marker 4
    let t3 = chrono::DateTime::parse_from_rfc3339(&times[2]).unwrap();
    let target = (t3 + chrono::Duration::milliseconds(500)).to_rfc3339();
    let pgdata = s.path("restored");
    let port = bascule_tests::free_port();
    let r = run(s
        .controller(&["restore", "--pitr", "--at", &target, "--db-user", "bascule", "--port", &port.to_string()])
        .arg("--identity")
        .arg(s.path("customer.key"))
        .arg("--pgdata")
        .arg(&pgdata));
    let out = text(&r);
    assert!(
        r.status.success(),
        "PITR restore failed:\n{out}\n{}",
        std::fs::read_to_string(pgdata.join("bascule-recovery.log")).unwrap_or_default()
    );
    let restored = |sql: &str| {
        ok(Command::new(s.pg.tool("psql")).args(["-X", "-A", "-t", "-h"]).arg(&pgdata).args([
            "-p",
            &port.to_string(),
            "-U",
            "bascule",
            "-d",
            "mairie",
            "-c",
            sql,
        ]))
        .trim()
        .to_string()
    };
    assert_eq!(restored("SELECT string_agg(n::text, ',' ORDER BY n) FROM markers"), "1,2,3", "{out}");
    assert!(out.contains("recovery point: last replayed commit"), "{out}");
    assert!(out.contains("within target"), "{out}");
    // the restored cluster is promoted: it takes writes
    restored("INSERT INTO markers VALUES (100, now())");
    ok(&mut s.pg.cmd("pg_ctl", &["-D", pgdata.to_str().unwrap(), "-m", "immediate", "stop"]));
}
