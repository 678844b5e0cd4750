//! The failover benchmark: on the same cluster and the same archive, the
//! recovery time of site B rebuilt from the providers (`restore --pitr`: the
//! newest base backup, then every WAL file since) against the promotion of a
//! warm standby (`bascule-controller standby`, then a runbook's `promote`
//! step). Run it with `./scripts/bench.sh standby [PGBENCH_SCALE]`.
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bascule_tests::bench::{du, timed};
use bascule_tests::{free_port, ok, run, text, wait_until, KillOnDrop, Scenario};

fn count(s: &Scenario, host: &std::path::Path, port: u16) -> Option<String> {
    let o = run(Command::new(s.pg.tool("psql")).args(["-X", "-A", "-t", "-h"]).arg(host).args([
        "-p",
        &port.to_string(),
        "-U",
        "bascule",
        "-d",
        "bench",
        "-c",
        "SELECT count(*) FROM pgbench_history",
    ]));
    o.status.success().then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

fn main() {
    let scale: u32 = std::env::args().nth(1).map(|a| a.parse().expect("scale")).unwrap_or(100);
    let s = Scenario::start_archiving(100);
    let _daemon = s.daemon();
    s.pgbench_init(scale);
    let o = run(s.agent(&["snapshot", "--job", "base"]).env("RUST_LOG", "info"));
    assert!(o.status.success(), "{}", text(&o));
    let base_bytes = Scenario::log_field(&o, "source_bytes");
    // WAL after the base backup, before the standby exists
    assert!(s.pgbench(20).wait_with_output().unwrap().status.success());

    let standby_dir = s.path("standby");
    let port_b = free_port();
    let log = std::fs::File::create(s.path("standby.log")).unwrap();
    let t0 = Instant::now();
    let _standby = KillOnDrop(
        s.controller(&["standby", "--db-user", "bascule", "--port", &port_b.to_string()])
            .arg("--identity")
            .arg(s.path("customer.key"))
            .arg("--pgdata")
            .arg(&standby_dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    // the primary's last writes, their WAL ended and on both providers; then it dies
    assert!(s.pgbench(10).wait_with_output().unwrap().status.success());
    let last = s.switch_wal();
    s.wait_on_both(&last, Duration::from_secs(600));
    let primary_rows = s.pg.psql("bench", "SELECT count(*) FROM pgbench_history");
    wait_until("the standby catches up", Duration::from_secs(1800), || count(&s, &standby_dir, port_b).as_deref() == Some(&primary_rows));
    let t_standby_built = t0.elapsed();
    ok(&mut s.pg.cmd("pg_ctl", &["-D", s.pg.data_dir().to_str().unwrap(), "-m", "immediate", "stop"]));

    // rebuild from scratch, as without a standby
    let rebuilt = s.path("rebuilt");
    let port_r = free_port();
    let (t_rebuild, out) = timed(
        "restore --pitr (rebuild site B)",
        s.controller(&["restore", "--pitr", "--db-user", "bascule", "--port", &port_r.to_string()])
            .arg("--identity")
            .arg(s.path("customer.key"))
            .arg("--pgdata")
            .arg(&rebuilt),
    );
    assert_eq!(count(&s, &rebuilt, port_r).as_deref(), Some(primary_rows.as_str()), "{out}");
    let _ = run(&mut s.pg.cmd("pg_ctl", &["-D", rebuilt.to_str().unwrap(), "-m", "immediate", "stop"]));

    // promotion
    let t0 = Instant::now();
    s.promote(&standby_dir, port_b, &last);
    let t_promote = t0.elapsed();
    assert_eq!(count(&s, &standby_dir, port_b).as_deref(), Some(primary_rows.as_str()));
    let _ = run(&mut s.pg.cmd("pg_ctl", &["-D", standby_dir.to_str().unwrap(), "-m", "immediate", "stop"]));

    println!("\n| pgbench scale {scale}: base backup {base_bytes} bytes, cluster on disk {} MB | time |", du(&rebuilt) / 1_000_000);
    println!("|---|---|");
    println!("| site B rebuilt from the providers (`restore --pitr`: base backup + WAL, promoted) | {:.1} s |", t_rebuild.as_secs_f64());
    println!("| site B's warm standby promoted (`drill run`, `promote` step, process start included) | {:.1} s |", t_promote.as_secs_f64());
    println!("| ratio promotion / rebuild | {:.3}× |", t_promote.as_secs_f64() / t_rebuild.as_secs_f64());
    println!("| (building the standby and catching up, done ahead of time) | {:.1} s |", t_standby_built.as_secs_f64());
}
