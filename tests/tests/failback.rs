//! Failover, reprotect and failback on real clusters under a write load:
//! site A fails over to site B's warm standby; B archives its timeline under
//! its own key; A is rebuilt from the providers as a standby of B; the
//! shipped `failback.yaml` switches back with no committed order lost; a
//! point-in-time restore reaches each of the three timelines.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bascule_tests::{bin, free_port, ok, run, text, wait_until, write, KillOnDrop, Scenario};

const MINUTE: Duration = Duration::from_secs(60);

/// One order every 50 ms on the cluster listening on `port` (it changes at
/// each switch); the ids that committed. Failures (a site down, fenced) are
/// retried with the next id.
struct Load {
    port: Arc<AtomicU16>,
    committed: Arc<Mutex<Vec<u64>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(s: &Scenario) -> Load {
        let (port, committed, stop) =
            (Arc::new(AtomicU16::new(s.pg.port)), Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicBool::new(false)));
        let psql = s.pg.tool("psql");
        let (p, c, st) = (port.clone(), committed.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut id = 0u64;
            while !st.load(Ordering::Relaxed) {
                id += 1;
                let dsn = format!("host=127.0.0.1 port={} user=bascule dbname=mairie connect_timeout=2", p.load(Ordering::Relaxed));
                let sql = format!("INSERT INTO orders (id) VALUES ({id})");
                if Command::new(&psql).args(["-X", "-q", "-d", &dsn, "-c", &sql]).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
                {
                    c.lock().unwrap().push(id);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Load { port, committed, stop, thread: Some(thread) }
    }

    fn committed(&self) -> Vec<u64> {
        self.committed.lock().unwrap().clone()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn psql_at(s: &Scenario, port: u16, sql: &str) -> String {
    ok(Command::new(s.pg.tool("psql")).args([
        "-X",
        "-A",
        "-t",
        "-d",
        &format!("host=127.0.0.1 port={port} user=bascule dbname=mairie"),
        "-c",
        sql,
    ]))
    .trim()
    .to_string()
}

/// The orders of `committed` the cluster on `port` lacks.
fn missing(s: &Scenario, port: u16, committed: &[u64]) -> Vec<u64> {
    let have: std::collections::BTreeSet<u64> =
        psql_at(s, port, "SELECT id FROM orders").lines().filter_map(|l| l.trim().parse().ok()).collect();
    committed.iter().filter(|i| !have.contains(i)).copied().collect()
}

/// `bascule-controller standby` for `pgdata` on `port`, archiving through `agent_cfg` once promoted.
fn standby(s: &Scenario, name: &str, pgdata: &Path, port: u16, agent_cfg: &Path) -> KillOnDrop {
    let archive = format!("{} wal-push --config {} %p", bin("bascule-agent").display(), agent_cfg.display());
    s.standby(pgdata, port, &["--archive-command", &archive], &format!("standby-{name}.log"))
}

fn daemon(s: &Scenario, name: &str, cfg: &Path) -> KillOnDrop {
    let log = std::fs::File::create(s.path(&format!("daemon-{name}.log"))).unwrap();
    KillOnDrop(s.agent_with(cfg, &["run"]).stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap())
}

/// `sql` on the cluster whose socket is in `pgdata` (empty when it does not answer).
fn on_socket(s: &Scenario, pgdata: &Path, port: u16, sql: &str) -> String {
    String::from_utf8_lossy(&s.psql_socket(pgdata, port, sql).stdout).trim().to_string()
}

const ERAS: &str = "SELECT string_agg(name, ',' ORDER BY at) FROM era";

/// The shipped failback runbook run from B to A2.
fn run_failback(s: &Scenario, b: &Path, port_b: u16, a2: &Path, port_a2: u16) -> std::process::Output {
    let runbook = failback_runbook(s, &pg_ctl_as_postgres(s, &format!("-D {} -m fast -w stop", b.display())));
    let mut c = Command::new(bin("bascule-controller"));
    c.args(["drill", "run", "--config"]).arg(s.path("controller.yaml")).arg(&runbook);
    for v in [
        format!("tenant={}", s.tenant),
        "site_b_host=127.0.0.1".into(),
        format!("site_b_port={port_b}"),
        "site_b_user=bascule".into(),
        format!("site_a_pgdata={}", a2.display()),
        format!("site_a_port={port_a2}"),
        "site_a_user=bascule".into(),
        "app_db=mairie".into(),
    ] {
        c.arg("--var").arg(v);
    }
    run(&mut c)
}

fn eras(s: &Scenario, port: u16) -> String {
    psql_at(s, port, ERAS)
}

fn pg_ctl_as_postgres(s: &Scenario, args: &str) -> String {
    let prog = format!("{} {args}", s.pg.tool("pg_ctl").display());
    if bascule_tests::is_root() {
        format!("runuser -u postgres -- {prog}")
    } else {
        prog
    }
}

/// The shipped failback runbook with this site's commands.
fn failback_runbook(s: &Scenario, stop_b: &str) -> PathBuf {
    let mut rb = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../runbooks/failback.yaml")).unwrap();
    for (from, to) in [
        ("'ssh \"$site_b_host\" sudo systemctl stop postgresql'", format!("{stop_b:?}")),
        ("'echo \"point the load balancer at site A (port $site_a_port)\"'", "'true'".to_string()),
        ("'ssh \"$site_b_host\" sudo systemctl start bascule-standby-site-b'", "'true'".to_string()),
    ] {
        assert!(rb.contains(from), "the shipped runbook has {from}");
        rb = rb.replace(from, &to);
    }
    let path = s.path("failback.yaml");
    write(&path, &rb);
    path
}

fn trust(s: &Scenario, keys: &str) {
    let ctl = std::fs::read_to_string(s.path("controller.yaml")).unwrap();
    let line = ctl.lines().find(|l| l.trim_start().starts_with("verify_keys:")).unwrap().to_string();
    write(&s.path("controller.yaml"), &ctl.replace(&line, &format!("    verify_keys: [{keys}]")));
}

fn now_plus(secs: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(secs)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[test]
fn failover_reprotect_and_failback_lose_no_committed_order_and_pitr_reaches_each_timeline() {
    let s = Scenario::start_archiving(100);
    let _daemon_a = s.daemon();
    let start = now_plus(-60);
    let key_a = s.verify_key.clone();
    assert!(run(&mut s.agent(&["snapshot", "--job", "base"])).status.success());
    s.pg.psql("mairie", "CREATE TABLE orders (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp()); CREATE TABLE era (name text, at timestamptz DEFAULT clock_timestamp()); INSERT INTO era (name) VALUES ('A')");
    let load = Load::start(&s);

    // site B: a warm standby that archives through its own agent once promoted
    let (b, port_b) = (s.path("site-b"), free_port());
    let (cfg_b, key_b) = s.site_agent("b", port_b, &[&key_a]);
    let _standby_b = standby(&s, "b", &b, port_b, &cfg_b);
    let _daemon_b = daemon(&s, "b", &cfg_b);
    let w = s.switch_wal();
    s.wait_on_both(&w, MINUTE);
    wait_until("B replays era A", 3 * MINUTE, || {
        run(Command::new(s.pg.tool("psql")).args(["-X", "-A", "-t", "-h"]).arg(&b).args([
            "-p",
            &port_b.to_string(),
            "-U",
            "bascule",
            "-d",
            "mairie",
            "-c",
            "SELECT 1 FROM era",
        ]))
        .status
        .success()
    });
    std::thread::sleep(Duration::from_secs(1));
    let t1 = now_plus(0);
    std::thread::sleep(Duration::from_secs(1));

    // failover A → B: A's last segment ended and on both providers, then A dies
    let before_failover = load.committed();
    let last = s.switch_wal();
    s.wait_on_both(&last, MINUTE);
    ok(&mut s.pg.cmd("pg_ctl", &["-D", s.pg.data_dir().to_str().unwrap(), "-m", "immediate", "stop"]));
    s.promote(&b, port_b, &last);
    load.port.store(port_b, Ordering::Relaxed);
    // orders A committed after its last archived segment are the failover's data loss (its RPO)
    let on_b_from = load.committed().len();
    assert_eq!(missing(&s, port_b, &before_failover), Vec::<u64>::new(), "orders committed before A's last archived segment, on B");
    trust(&s, &format!("{{ key: \"{key_a}\", revoked_at: {} }}, {{ key: \"{key_b}\", valid_from: {start} }}", now_plus(1)));
    psql_at(&s, port_b, "INSERT INTO era (name) VALUES ('B')");
    std::thread::sleep(Duration::from_secs(1));
    let t2 = now_plus(0);
    std::thread::sleep(Duration::from_secs(1));

    // reprotect: B's base backup under B's key, then A rebuilt from the providers as a standby of B
    let o = run(s.agent_with(&cfg_b, &["snapshot", "--job", "base"]).env("RUST_LOG", "info"));
    assert!(o.status.success(), "{}", text(&o));
    let (a2, port_a2) = (s.path("site-a2"), free_port());
    let (cfg_a2, key_a2) = s.site_agent("a2", port_a2, &[&key_a, &key_b]);
    trust(&s, &format!("{{ key: \"{key_a}\", revoked_at: {} }}, {{ key: \"{key_b}\", valid_from: {start} }}, {{ key: \"{key_a2}\", valid_from: {start} }}", t2));
    let _standby_a2 = standby(&s, "a2", &a2, port_a2, &cfg_a2);
    let _daemon_a2 = daemon(&s, "a2", &cfg_a2);
    let w = psql_at(&s, port_b, "SELECT pg_walfile_name(pg_switch_wal())");
    wait_until("A2 replays era B", 3 * MINUTE, || on_socket(&s, &a2, port_a2, ERAS) == "A,B");
    eprintln!("A2 follows B (last switch {w})");

    // the planned failback B → A2, by the shipped runbook
    let o = run_failback(&s, &b, port_b, &a2, port_a2);
    let mut before_failback = before_failover.clone();
    before_failback.extend_from_slice(&load.committed()[on_b_from..]);
    assert!(o.status.success() && text(&o).contains("PASS"), "the failback:\n{}", text(&o));
    eprintln!("{}", text(&o));
    load.port.store(port_a2, Ordering::Relaxed);
    assert_eq!(missing(&s, port_a2, &before_failback), Vec::<u64>::new(), "no order committed before the planned switch is lost");
    assert!(
        before_failback.len() > before_failover.len() + 20,
        "B took orders under the load: {} then {}",
        before_failover.len(),
        before_failback.len()
    );
    psql_at(&s, port_a2, "INSERT INTO era (name) VALUES ('A2')");
    std::thread::sleep(Duration::from_secs(2));
    drop(load);
    let all = psql_at(&s, port_a2, "SELECT count(*) FROM orders");
    let w = psql_at(&s, port_a2, "SELECT pg_walfile_name(pg_switch_wal())");
    assert!(w.starts_with("00000003"), "A2 writes timeline 3: {w}");
    eprintln!(
        "orders: {} committed on A before its last archived segment, {} committed by the end of the failback, {} on A2 at the end, none lost before the planned switch",
        before_failover.len(),
        before_failback.len(),
        all
    );
    s.wait_on_both_providers(&w, 2 * MINUTE);

    // a point in time on each timeline
    for (dir, args, want) in
        [("pitr-t1", vec!["--at", t1.as_str()], "A"), ("pitr-t2", vec!["--at", t2.as_str()], "A,B"), ("pitr-end", vec![], "A,B,A2")]
    {
        let (out, q) = s.pitr(dir, &args);
        assert_eq!(q(ERAS), want, "{dir}:\n{out}");
        if dir == "pitr-end" {
            assert_eq!(q("SELECT count(*) FROM orders"), all, "{out}");
        }
    }
    assert_eq!(eras(&s, port_a2), "A,B,A2");
    // and B a standby again: rebuilt from the providers, following A2's timeline
    let (b2, port_b2) = (s.path("site-b2"), free_port());
    let _standby_b2 = standby(&s, "b2", &b2, port_b2, &cfg_b);
    wait_until("B, a standby again, replays A2's era", 3 * MINUTE, || on_socket(&s, &b2, port_b2, ERAS) == "A,B,A2");
    for d in [&a2, &b, &b2] {
        let _ = run(&mut s.pg.cmd("pg_ctl", &["-D", d.to_str().unwrap(), "-m", "immediate", "stop"]));
    }
}
