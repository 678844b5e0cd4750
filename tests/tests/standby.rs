//! The second site as a warm standby: built from the newest base backup,
//! fed from both providers as WAL arrives, through a provider outage and a
//! restart of the controller's process, then promoted by a runbook step.
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bascule_tests::http::{get, metric};
use bascule_tests::{bin, free_port, ok, run, text, wait_until, write, KillOnDrop, Scenario};

const MINUTE: Duration = Duration::from_secs(60);

fn start_standby(s: &Scenario, pgdata: &Path, port: u16, metrics: u16) -> KillOnDrop {
    s.standby(pgdata, port, &["--metrics", &format!("127.0.0.1:{metrics}")], "standby.log")
}

/// `sql` on the standby, through its socket in `pgdata`.
fn on_standby(s: &Scenario, pgdata: &Path, port: u16, sql: &str) -> std::process::Output {
    s.psql_socket(pgdata, port, sql)
}

/// The number of orders the standby has replayed (None while it does not answer).
fn standby_orders(s: &Scenario, pgdata: &Path, port: u16) -> Option<u64> {
    let o = on_standby(s, pgdata, port, "SELECT count(*) FROM orders");
    o.status.success().then(|| String::from_utf8_lossy(&o.stdout).trim().parse().ok()).flatten()
}

/// A primary archiving through its agent's daemon, a base backup, and `orders` orders.
fn primary(rows: u32, orders: u64) -> (Scenario, KillOnDrop) {
    let s = Scenario::start_archiving(rows);
    let daemon = s.daemon();
    let o = run(&mut s.agent(&["snapshot", "--job", "base"]));
    assert!(o.status.success(), "{}", text(&o));
    s.pg.psql("mairie", "CREATE TABLE orders (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())");
    insert_orders(&s, 1, orders);
    (s, daemon)
}

fn insert_orders(s: &Scenario, from: u64, to: u64) {
    s.pg.psql("mairie", &format!("INSERT INTO orders SELECT g FROM generate_series({from}, {to}) g"));
}

#[test]
fn a_standby_follows_both_providers_through_an_outage_and_a_restart_then_is_promoted() {
    let (mut s, _daemon) = primary(300, 100);
    let w = s.switch_wal();
    s.wait_on_both(&w, MINUTE);

    // built from the base backup, then fed the WAL since
    let pgdata = s.path("standby");
    let (port, mport) = (free_port(), free_port());
    let standby = start_standby(&s, &pgdata, port, mport);
    wait_until("the standby replays the first 100 orders", 3 * MINUTE, || standby_orders(&s, &pgdata, port) == Some(100));
    let metrics = format!("http://127.0.0.1:{mport}/metrics");
    let up = format!("bascule_standby_up{{tenant=\"{}\"}}", s.tenant);
    let lag = format!("bascule_standby_replay_lag_seconds{{tenant=\"{}\"}}", s.tenant);
    wait_until("the standby's metrics say it is up and caught up", MINUTE, || {
        let m = get(&metrics);
        metric(&m, &up) == Some(1.0) && metric(&m, &lag) == Some(0.0)
    });
    // no plaintext WAL at rest outside the data directory's own pg_wal
    let stray: Vec<_> =
        std::fs::read_dir(&pgdata).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().starts_with("0000")).collect();
    assert!(stray.is_empty(), "{stray:?}");

    // provider A stops: the standby is fed from B
    s.a.stop();
    insert_orders(&s, 101, 200);
    s.switch_wal();
    wait_until("the standby replays orders shipped to B alone", 3 * MINUTE, || standby_orders(&s, &pgdata, port) == Some(200));
    s.a.restart();

    // the controller's process dies (PostgreSQL keeps running); a new one picks up
    drop(standby);
    insert_orders(&s, 201, 300);
    let w = s.switch_wal();
    s.wait_on_both(&w, MINUTE);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(standby_orders(&s, &pgdata, port), Some(200), "nothing fed the standby while its process was down");
    let standby = start_standby(&s, &pgdata, port, mport);
    wait_until("the restarted standby catches up", 3 * MINUTE, || standby_orders(&s, &pgdata, port) == Some(300));
    let log = std::fs::read_to_string(s.path("standby.log")).unwrap();
    assert!(log.contains("Picking up the standby where it stands"), "{log}");

    // failover by promotion: the last orders, their WAL ended and on both providers, then the primary dies
    insert_orders(&s, 301, 400);
    let last = s.switch_wal();
    s.wait_on_both(&last, MINUTE);
    ok(&mut s.pg.cmd("pg_ctl", &["-D", s.pg.data_dir().to_str().unwrap(), "-m", "immediate", "stop"]));
    let rb = s.path("promote.yaml");
    write(
        &rb,
        &format!(
            "name: promote\ntargets: {{ rto: 1m }}\nvariables:\n  wal: {{ default: \"{last}\", pattern: \"[0-9A-F]{{24}}\" }}\nstages:\n  - name: failover\n    steps:\n      - id: cut\n        shell: {{ command: \"true\" }}\n        rto: start\n      - id: promote\n        promote: {{ tenant: {t}, pgdata: \"{d}\", port: \"{port}\", db_user: bascule, wal: \"${{wal}}\" }}\n        timeout: 2m\n        rto: end\n",
            t = s.tenant,
            d = pgdata.display()
        ),
    );
    let t0 = Instant::now();
    let o = run(Command::new(bin("bascule-controller")).args(["drill", "run", "--config"]).arg(s.path("controller.yaml")).arg(&rb));
    let took = t0.elapsed();
    assert!(o.status.success() && text(&o).contains("PASS"), "{}", text(&o));
    eprintln!("promotion drill: {:.1} s\n{}", took.as_secs_f64(), text(&o));
    assert!(took < MINUTE, "promotion took {took:?}");
    assert_eq!(standby_orders(&s, &pgdata, port), Some(400), "every order the archive held is on the promoted standby");
    // it takes writes, and the standby's process has seen it promoted
    assert!(on_standby(&s, &pgdata, port, "INSERT INTO orders VALUES (401)").status.success());
    assert_eq!(standby_orders(&s, &pgdata, port), Some(401));
    wait_until("the standby's process ends once promoted", MINUTE, || {
        std::fs::read_to_string(s.path("standby.log")).unwrap().contains("The standby was promoted")
    });
    drop(standby);
    let _ = run(&mut s.pg.cmd("pg_ctl", &["-D", pgdata.to_str().unwrap(), "-m", "immediate", "stop"]));
}

#[test]
fn serve_keeps_the_standby_of_its_configuration_fed() {
    let (s, _daemon) = primary(100, 50);
    // a restore measures the throughput the projected recovery time uses
    let o = s.snapshot();
    assert!(o.status.success(), "{}", text(&o));
    let before = text(&run(&mut s.controller(&["snapshots"])));
    assert!(before.contains("projected RTO: not known yet"), "{before}");
    // (the heartbeat writes on: the row counts checked are the export's)
    let r = s.restore("latest", "restored", &s.path("customer.key"));
    assert!(r.status.success(), "{}", text(&r));
    let listed = text(&run(&mut s.controller(&["snapshots"])));
    assert!(listed.contains("projected RTO: ") && listed.contains("/s (the last restore's throughput"), "{listed}");
    // and a drill report naming the tenant shows it
    let rb = s.path("check.yaml");
    write(&rb, &format!("name: check\nstages:\n  - name: only\n    steps:\n      - id: current\n        wait_replicated: {{ tenant: {}, max_lag: 1h }}\n        timeout: 1m\n", s.tenant));
    let o = run(Command::new(bin("bascule-controller")).args(["drill", "run", "--config"]).arg(s.path("controller.yaml")).arg(&rb));
    assert!(o.status.success(), "{}", text(&o));
    let rep = ok(Command::new(bin("bascule-controller"))
        .args(["drill", "report", "--format", "json", "--config"])
        .arg(s.path("controller.yaml"))
        .arg("1"));
    let rep: serde_json::Value = serde_json::from_str(&rep).unwrap();
    let p = &rep["evidence"]["projected_rto"][0];
    assert!(p["tenant"] == s.tenant.as_str() && p["seconds"].as_f64().is_some_and(|v| v > 0.0), "{rep:#}");
    let pgdata = s.path("standby");
    let port = free_port();
    let standby = format!(
        "standby:\n  tenant: {}\n  identity: {}\n  pgdata: {}\n  port: {port}\n  db_user: bascule\n",
        s.tenant,
        s.path("customer.key").display(),
        pgdata.display()
    );
    let (serve, base) = s.serve(&standby);
    let w = s.switch_wal();
    s.wait_on_both(&w, MINUTE);
    wait_until("serve's standby replays the orders", 3 * MINUTE, || standby_orders(&s, &pgdata, port) == Some(50));
    let up = format!("bascule_standby_up{{tenant=\"{}\"}}", s.tenant);
    wait_until("serve's /metrics says the standby is up", MINUTE, || metric(&get(&format!("{base}/metrics")), &up) == Some(1.0));
    // serve stops on SIGTERM; the standby's server keeps what it has
    ok(Command::new("kill").args(["-TERM", &serve.0.id().to_string()]));
    wait_until("serve stops", MINUTE, || std::fs::read_to_string(s.path("serve.log")).unwrap().contains("Stopping"));
    drop(serve);
    assert_eq!(standby_orders(&s, &pgdata, port), Some(50));
    let _ = run(&mut s.pg.cmd("pg_ctl", &["-D", pgdata.to_str().unwrap(), "-m", "immediate", "stop"]));
}

#[test]
fn a_promoted_standby_archives_its_new_timeline_under_site_bs_key_and_pitr_follows_it() {
    let before_b = (chrono::Utc::now() - chrono::Duration::minutes(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (s, _daemon) = primary(100, 50);
    let w = s.switch_wal();
    s.wait_on_both(&w, MINUTE);

    // site B: a standby that, once promoted, archives through its own agent
    let pgdata = s.path("standby");
    let (port, mport) = (free_port(), free_port());
    let (cfg_b, key_b) = s.site_agent("b", port, &[&s.verify_key]);
    let archive = format!("{} wal-push --config {} %p", bin("bascule-agent").display(), cfg_b.display());
    let _standby = s.standby(&pgdata, port, &["--metrics", &format!("127.0.0.1:{mport}"), "--archive-command", &archive], "standby.log");
    let daemon_log = std::fs::File::create(s.path("daemon-b.log")).unwrap();
    let _daemon_b = KillOnDrop(
        s.agent_with(&cfg_b, &["run"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(daemon_log.try_clone().unwrap())
            .stderr(daemon_log)
            .spawn()
            .unwrap(),
    );
    wait_until("the standby replays the orders", 3 * MINUTE, || standby_orders(&s, &pgdata, port) == Some(50));

    // site A dies; B is promoted and takes writes on timeline 2
    let last = s.switch_wal();
    s.wait_on_both(&last, MINUTE);
    ok(&mut s.pg.cmd("pg_ctl", &["-D", s.pg.data_dir().to_str().unwrap(), "-m", "immediate", "stop"]));
    s.promote(&pgdata, port, &last);
    let revoked = (chrono::Utc::now() + chrono::Duration::seconds(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    assert!(on_standby(&s, &pgdata, port, "INSERT INTO orders SELECT g FROM generate_series(51, 80) g").status.success());
    let o = on_standby(&s, &pgdata, port, "SELECT pg_walfile_name(pg_switch_wal())");
    let b_wal = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert!(b_wal.starts_with("00000002"), "site B writes timeline 2: {b_wal}");
    wait_until("site B's WAL and history file on both providers", 2 * MINUTE, || {
        let (a, b) = (s.wal_on(&s.a), s.wal_on(&s.b));
        [b_wal.as_str(), "00000002.history"].iter().all(|n| a.contains(*n) && b.contains(*n))
    });

    // the controller trusts site B's key from before the standby, site A's until the promotion
    let ctl = std::fs::read_to_string(s.path("controller.yaml")).unwrap().replace(
        &format!("verify_keys: [\"{}\"]", s.verify_key),
        &format!("verify_keys: [{{ key: \"{}\", revoked_at: {revoked} }}, {{ key: \"{key_b}\", valid_from: {before_b} }}]", s.verify_key),
    );
    write(&s.path("controller.yaml"), &ctl);
    std::thread::sleep(Duration::from_millis(1100));
    let wal = text(&run(&mut s.controller(&["wal"])));
    assert!(wal.contains("00000002"), "the archive shows timeline 2:\n{wal}");
    let v = run(&mut s.controller(&["verify"]));
    assert!(v.status.success(), "{}", text(&v));
    // the monitor follows the new primary: site B's HEAD continues the sequence, its WAL is the newest
    let (_serve, base) = s.serve("");
    let promoted_at = chrono::DateTime::parse_from_rfc3339(&revoked).unwrap().timestamp() as f64 - 1.0;
    wait_until("the monitor reads site B's HEAD on both providers", MINUTE, || {
        let (_, m) = bascule_tests::http::curl("GET", &format!("{base}/metrics"), None, None, &[]);
        ["provider-a", "provider-b"].iter().all(|p| {
            metric(&m, &format!("bascule_last_wal_timestamp_seconds{{provider=\"{p}\",tenant=\"{}\"}}", s.tenant))
                .is_some_and(|t| t >= promoted_at)
        }) && !m.contains("reason=\"rollback\"")
    });
    // a point-in-time restore to the end follows the switch onto B's timeline
    let (out, query) = s.pitr("pitr-after-switch", &[]);
    assert!(out.contains("timeline 2") || out.contains("on timeline 3"), "{out}");
    assert_eq!(query("SELECT count(*) FROM orders"), "80", "{out}");
    let _ = run(&mut s.pg.cmd("pg_ctl", &["-D", pgdata.to_str().unwrap(), "-m", "immediate", "stop"]));
}
