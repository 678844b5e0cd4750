//! `drill run`: stages, timeouts, retries, rollback, and the audit chain.
use std::process::Command;

use bascule_tests::{bin, ok, run, text, write};

/// A controller config with two local-directory providers (drills of shell
/// steps need no server).
fn controller(dir: &std::path::Path) -> std::path::PathBuf {
    let cfg = dir.join("controller.yaml");
    write(
        &cfg,
        &format!(
            "state_dir: {d}/state\nproviders:\n  - name: a\n    url: file://{d}/a\n  - name: b\n    url: file://{d}/b\ntenants: []\n",
            d = dir.display()
        ),
    );
    cfg
}

#[test]
fn a_failing_check_rolls_back_timeouts_are_enforced_and_retries_counted() {
    let d = tempfile::tempdir().unwrap();
    let cfg = controller(d.path());
    let p = d.path().display();
    let runbook = d.path().join("rb.yaml");
    write(
        &runbook,
        &format!(
            r#"name: engine-test
targets: {{ rto: 1h }}
variables: {{ dir: "{p}" }}
stages:
  - name: cut
    steps:
      - id: flaky
        shell: {{ command: "n=$(cat ${{dir}}/count 2>/dev/null || echo 0); echo $((n+1)) > ${{dir}}/count; [ $n -ge 2 ]" }}
        retries: 3
        backoff: 10ms
        rto: start
      - id: slow
        shell: {{ command: "sleep 30" }}
        timeout: 1s
        critical: false
  - name: check
    steps:
      - id: check
        verify: {{ http: {{ url: "http://127.0.0.1:1/health" }} }}
        rto: end
  - name: never
    steps:
      - id: after
        shell: {{ command: "touch ${{dir}}/after" }}
on_failure:
  - id: roll-back
    shell: {{ command: "touch ${{dir}}/rolled-back" }}
"#
        ),
    );
    let t0 = std::time::Instant::now();
    let o = run(Command::new(bin("bascule-controller")).args(["drill", "run", "--config"]).arg(&cfg).arg(&runbook));
    let out = text(&o);
    assert!(!o.status.success(), "a failed drill exits non-zero:\n{out}");
    assert!(out.contains("FAIL"), "{out}");
    assert!(t0.elapsed() < std::time::Duration::from_secs(20), "the 1 s timeout was enforced: {:?}", t0.elapsed());
    assert!(d.path().join("rolled-back").exists(), "on_failure ran:\n{out}");
    assert!(!d.path().join("after").exists(), "nothing after a critical failure:\n{out}");
    let line = |id: &str| {
        out.lines().find(|l| l.split_whitespace().nth(1) == Some(id)).unwrap_or_else(|| panic!("no {id} in:\n{out}")).to_string()
    };
    assert!(line("flaky").contains("3 attempt(s)") && line("flaky").contains("passed"), "{out}");
    assert!(line("slow").contains("failed (not critical)"), "{out}");
    assert!(line("check").contains("failed"), "{out}");
    assert!(out.contains("FAIL — a critical step failed"), "{out}");
    assert!(line("after").contains("skipped"), "{out}");
    assert!(line("roll-back").contains("passed"), "{out}");

    // the audit chain verifies; a row changed behind SQLite's back is found
    let audit = || run(Command::new(bin("bascule-controller")).args(["drill", "audit", "--verify", "--config"]).arg(&cfg));
    let a = audit();
    assert!(a.status.success(), "{}", text(&a));
    let db = d.path().join("state/drills.sqlite");
    let store = bascule_controller::state::Store::open(&db).unwrap();
    store.connection().execute_batch("DROP TRIGGER audit_no_update; UPDATE audit SET detail = 'check passed' WHERE seq = 3;").unwrap();
    drop(store);
    let a = audit();
    assert!(!a.status.success() && text(&a).contains("audit row 3"), "{}", text(&a));
}

/// `drill run` as a child process, its output to `log`.
fn spawn_drill(cfg: &std::path::Path, runbook: &std::path::Path, log: &std::path::Path) -> std::process::Child {
    let f = std::fs::File::create(log).unwrap();
    Command::new(bin("bascule-controller"))
        .args(["drill", "run", "--config"])
        .arg(cfg)
        .arg(runbook)
        .stdin(std::process::Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap()
}

#[test]
fn a_killed_controller_resumes_from_the_next_step_after_an_approval_and_the_report_renders() {
    let d = tempfile::tempdir().unwrap();
    let cfg = controller(d.path());
    let p = d.path().display();
    let runbook = d.path().join("rb.yaml");
    let count = |name: &str| std::fs::read_to_string(d.path().join(name)).unwrap_or_default().trim().to_string();
    write(
        &runbook,
        &format!(
            r#"name: resume-test
targets: {{ rto: 1h }}
variables: {{ dir: "{p}" }}
stages:
  - name: first
    steps:
      - id: one
        shell: {{ command: "n=$(cat ${{dir}}/one 2>/dev/null || echo 0); echo $((n+1)) > ${{dir}}/one" }}
        rto: start
  - name: handover
    steps:
      - id: go-ahead
        approval: {{ prompt: "The customer handed over its key" }}
        timeout: 2m
  - name: slow
    steps:
      - id: slow
        shell: {{ command: "n=$(cat ${{dir}}/slow 2>/dev/null || echo 0); echo $((n+1)) > ${{dir}}/slow; [ $n -ge 1 ] || sleep 60" }}
  - name: last
    steps:
      - id: last
        shell: {{ command: "touch ${{dir}}/last" }}
        rto: end
"#
        ),
    );
    let log = d.path().join("run.log");
    let mut child = spawn_drill(&cfg, &runbook, &log);
    let minute = std::time::Duration::from_secs(60);
    bascule_tests::wait_until("the approval question", minute, || std::fs::read_to_string(&log).unwrap().contains("APPROVAL NEEDED"));
    assert_eq!(count("one"), "1");
    let ctl = |args: &[&str]| run(Command::new(bin("bascule-controller")).args(["drill"]).args(args).arg("--config").arg(&cfg));
    // a step that is not an approval, then the right one
    assert!(!ctl(&["approve", "1", "one"]).status.success());
    let a = ctl(&["approve", "1", "go-ahead"]);
    assert!(a.status.success(), "{}", text(&a));
    assert!(!ctl(&["approve", "1", "go-ahead"]).status.success(), "a second answer is refused");
    // the controller dies while the step after the approval runs
    bascule_tests::wait_until("the slow step", minute, || count("slow") == "1");
    child.kill().unwrap();
    child.wait().unwrap();
    let list = text(&ctl(&["list"]));
    assert!(list.lines().any(|l| l.contains("resume-test") && l.contains("interrupted")), "{list}");
    assert!(!d.path().join("last").exists());

    let r = ctl(&["resume", "1"]);
    let out = text(&r);
    assert!(r.status.success(), "resume failed:\n{out}\n{}", std::fs::read_to_string(&log).unwrap());
    assert!(out.contains("PASS"), "{out}");
    assert_eq!(count("one"), "1", "a step that ended is not run again");
    assert_eq!(count("slow"), "2", "the interrupted step runs again");
    assert!(d.path().join("last").exists());
    assert!(!ctl(&["resume", "1"]).status.success(), "a finished drill does not resume");

    // the audit log tells the story, and its chain holds
    let a = ctl(&["audit", "--verify"]);
    assert!(a.status.success(), "{}", text(&a));
    let store = bascule_controller::state::Store::open(&d.path().join("state/drills.sqlite")).unwrap();
    let events: Vec<String> = store
        .connection()
        .prepare("SELECT event || ' ' || detail FROM audit ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for want in ["drill-started", "approved go-ahead", "drill-resume", "step slow passed", "drill-finished passed"] {
        assert!(events.iter().any(|e| e.starts_with(want)), "no {want:?} in the audit log: {events:#?}");
    }
    drop(store);

    // the report: JSON with the measures, HTML that Chromium renders with the verdict on it
    let json = ctl(&["report", "1", "--format", "json"]);
    let rep: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&json)));
    assert_eq!(rep["verdict"], "PASS");
    assert!(rep["rto"]["measured_seconds"].as_f64().unwrap() > 0.0, "{rep}");
    assert_eq!(rep["steps"].as_array().unwrap().len(), 4);
    // the evidence: who approved, and the audit log's head, which the store agrees with
    let ev = &rep["evidence"];
    assert_eq!(ev["approvals"][0]["step"], "go-ahead", "{ev}");
    assert_eq!(ev["approvals"][0]["approved"], true, "{ev}");
    let head = bascule_controller::state::Store::open(&d.path().join("state/drills.sqlite")).unwrap().audit_head().unwrap().unwrap();
    assert_eq!(ev["audit_head"]["hash"], head.1.as_str(), "{ev}");
    let md = text(&ctl(&["report", "1"]));
    assert!(md.contains("## Evidence") && md.contains("approval of `go-ahead`: approved by"), "{md}");
    let html = d.path().join("report.html");
    assert!(ctl(&["report", "1", "--format", "html", "--output", html.to_str().unwrap()]).status.success());
    let page = bascule_tests::browser::render(&html);
    assert!(page.dom.contains(r#"id="verdict">PASS</span>"#), "{}", page.dom);
    assert!(page.dom.contains("<svg") && page.dom.contains("slow"), "the timeline is on the page");
    // the green verdict box is drawn near the top of the screenshot
    let green = page.count_colour([0x2e, 0x7d, 0x32], 0..page.height.min(300));
    assert!(green > 2_000, "{green} pixels of the verdict's green in the top of the page");
}

/// A light write load on the primary: one order every 100 ms, each in its own
/// transaction, until the primary stops answering or `stop` is set. Returns
/// the ids committed, in order.
fn light_load(s: &bascule_tests::Scenario, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> std::thread::JoinHandle<Vec<u64>> {
    s.pg.psql("mairie", "CREATE TABLE orders (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())");
    let psql = s.pg.tool("psql");
    let dsn = s.pg.dsn("mairie");
    std::thread::spawn(move || {
        let mut ids = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let o = Command::new(&psql)
                .args(["-X", "-q", "-A", "-t", "-d", &dsn, "-c", "INSERT INTO orders DEFAULT VALUES RETURNING id"])
                .output();
            match o {
                Ok(o) if o.status.success() => ids.push(String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()),
                _ => break,
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        ids
    })
}

/// The shipped failover runbook, with this site's own commands to stop and
/// start site A and to switch traffic (every other line as shipped).
fn failover_runbook(s: &bascule_tests::Scenario, stop: &str, start: &str, switched: &std::path::Path) -> std::path::PathBuf {
    let mut rb = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../runbooks/saas-failover.yaml")).unwrap();
    for (from, to) in [
        ("'ssh \"$primary_host\" sudo systemctl stop postgresql'", format!("{stop:?}")),
        ("'ssh \"$primary_host\" sudo systemctl start postgresql'", format!("{start:?}")),
        (
            "'echo \"point the load balancer at site B (port $secondary_port)\"'",
            format!("'echo \"site B on port $secondary_port\" > {}'", switched.display()),
        ),
    ] {
        assert!(rb.contains(from), "the shipped runbook has {from}");
        rb = rb.replace(from, &to);
    }
    let runbook = s.path("saas-failover.yaml");
    std::fs::write(&runbook, rb).unwrap();
    runbook
}

#[test]
fn the_saas_failover_drill_passes_with_rpo_measured_from_heartbeats() {
    saas_failover(false);
}

#[test]
fn the_saas_failover_drill_promotes_site_bs_standby_when_there_is_one() {
    saas_failover(true);
}

/// The report's steps: which ran, how site B came up, what readiness found.
fn check_steps(rep: &serde_json::Value, standby: bool, rto: f64) {
    let ev = &rep["evidence"];
    assert_eq!(ev["production_stopped"], true, "{ev}");
    assert_eq!(ev["cut_step"], "stop-primary", "{ev}");
    assert!(ev["recovered"][0].as_str().unwrap().starts_with("restore-site-b: "), "{ev}");
    assert!(ev["readiness"].as_array().unwrap().len() >= 5 && ev["audit_head"]["seq"].as_i64().unwrap() > 0, "{ev}");
    let steps: Vec<&str> = rep["steps"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert!(steps.contains(&"wait-replicated") && steps.contains(&"restore-site-b") && !steps.contains(&"restart-primary"), "{steps:?}");
    let restore_step = rep["steps"].as_array().unwrap().iter().find(|s| s["id"] == "restore-site-b").unwrap();
    let restore_out = restore_step["output"].to_string();
    let restore_secs = restore_step["duration_seconds"].as_f64().unwrap();
    eprintln!("site B {}: RTO {rto:.1} s, restore-site-b {restore_secs:.1} s", if standby { "promoted" } else { "rebuilt" });
    assert_eq!(restore_out.contains("was promoted"), standby, "{restore_out}");
    let ready = rep["steps"].as_array().unwrap().iter().find(|s| s["id"] == "readiness").unwrap()["output"].to_string();
    for want in [
        "ok      identity",
        "ok      reach 127.0.0.1",
        "ok      tenant",
        if standby { "a standby, replayed through" } else { "bytes free" },
    ] {
        assert!(ready.contains(want), "no {want:?} in the readiness step's output: {ready}");
    }
}

/// `drill check` with a missing identity and a primary nobody listens on:
/// exit 1, each named.
fn readiness_names_what_is_wrong(s: &bascule_tests::Scenario, runbook: &std::path::Path, vars: &[String]) {
    // the readiness check, alone: what is wrong is named, one line each
    let mut check = Command::new(bin("bascule-controller"));
    check.args(["drill", "check", "--config"]).arg(s.path("controller.yaml")).arg(runbook);
    for v in vars.iter().filter(|v| !v.starts_with("identity=") && !v.starts_with("primary_port=")) {
        check.arg("--var").arg(v);
    }
    let o = run(check.args(["--var", "identity=/nonexistent/saas.key", "--var", "primary_port=1"]));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    for want in ["FAILED  identity /nonexistent/saas.key", "FAILED  reach 127.0.0.1:1", "ok      program pg_ctl", "failed"] {
        assert!(text(&o).contains(want), "no {want:?} in\n{}", text(&o));
    }
}

/// `bascule-controller standby` in site B's data directory, once it answers.
fn start_standby(s: &bascule_tests::Scenario, site_b: &std::path::Path, port_b: u16, dsn_b: &str) -> bascule_tests::KillOnDrop {
    let minute = std::time::Duration::from_secs(60);
    {
        let child = s.standby(site_b, port_b, &[], "standby.log");
        let t0 = std::time::Instant::now();
        while !run(Command::new(s.pg.tool("psql")).args(["-X", "-A", "-t", "-d", dsn_b, "-c", "SELECT 1"])).status.success() {
            assert!(
                t0.elapsed() < 3 * minute,
                "site B's standby does not answer:\n{}",
                std::fs::read_to_string(s.path("standby.log")).unwrap()
            );
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
        child
    }
}

/// The shipped saas-failover runbook, site B rebuilt from the archive, or
/// (`standby`) site B a warm standby that is promoted.
fn saas_failover(standby: bool) {
    use bascule_tests::Scenario;
    let minute = std::time::Duration::from_secs(60);
    let s = Scenario::start_archiving(2_000);
    let _daemon = s.daemon();
    bascule_tests::wait_until("the first heartbeat", minute, || {
        s.pg.psql("mairie", "SELECT count(*) FROM pg_tables WHERE schemaname = 'bascule'") == "1"
    });
    let b = run(s.agent(&["snapshot", "--job", "base"]).env("RUST_LOG", "info"));
    assert!(b.status.success(), "base backup failed:\n{}", text(&b));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = light_load(&s, stop.clone());
    std::thread::sleep(std::time::Duration::from_secs(3));
    let before_drill = s.pg.psql("mairie", "SELECT max(id) FROM orders");

    // site A is this test's cluster; site B a new data directory on another port
    let data = s.pg.data_dir();
    let pg_ctl = |args: &str| {
        let prog = format!("{} -D {} {args}", s.pg.tool("pg_ctl").display(), data.display());
        if bascule_tests::is_root() {
            format!("runuser -u postgres -- {prog}")
        } else {
            prog
        }
    };
    let site_b = s.path("site-b");
    let port_b = bascule_tests::free_port();
    let dsn_b = format!("host=127.0.0.1 port={port_b} user=bascule dbname=mairie");
    struct StopSiteB(std::process::Command);
    impl Drop for StopSiteB {
        fn drop(&mut self) {
            let _ = self.0.output();
        }
    }
    let _stop_b = StopSiteB(s.pg.cmd("pg_ctl", &["-D", site_b.to_str().unwrap(), "-m", "immediate", "stop"]));
    let switched = s.path("switched-to");
    let start_a = pg_ctl(&format!(
        "-l {}/restart.log -o '-p {} -k {} -c listen_addresses=127.0.0.1' -w start",
        s.dir.path().display(),
        s.pg.port,
        s.pg.socket_dir().display()
    ));
    let runbook = failover_runbook(&s, &pg_ctl("-m fast -w stop"), &start_a, &switched);
    let _standby = standby.then(|| start_standby(&s, &site_b, port_b, &dsn_b));
    let vars = [
        format!("tenant={}", s.tenant),
        format!("identity={}", s.path("customer.key").display()),
        "primary_host=127.0.0.1".to_string(),
        format!("primary_port={}", s.pg.port),
        "primary_user=bascule".to_string(),
        format!("secondary_pgdata={}", site_b.display()),
        format!("secondary_port={port_b}"),
        "secondary_user=bascule".to_string(),
        "app_db=mairie".to_string(),
    ];
    readiness_names_what_is_wrong(&s, &runbook, &vars);
    let mut c = Command::new(bin("bascule-controller"));
    c.args(["drill", "run", "--config"]).arg(s.path("controller.yaml")).arg(&runbook);
    for v in &vars {
        c.arg("--var").arg(v);
    }
    let o = run(&mut c);
    let out = text(&o);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let committed = load.join().unwrap();
    assert!(o.status.success(), "the drill failed:\n{out}\n{}", s.daemon_log());
    println!("{out}");
    assert!(out.contains("PASS"), "{out}");
    assert!(std::fs::read_to_string(&switched).unwrap().contains(&format!("site B on port {port_b}")), "traffic switched to site B");

    // the primary was really stopped; site B holds what A committed before the drill, and takes writes
    assert!(!run(&mut s.pg.cmd("pg_ctl", &["-D", data.to_str().unwrap(), "status"])).status.success(), "site A is down");
    let on_b = |sql: &str| ok(Command::new(s.pg.tool("psql")).args(["-X", "-A", "-t", "-d", &dsn_b, "-c", sql])).trim().to_string();
    let max_b: u64 = on_b("SELECT max(id) FROM orders").parse().unwrap();
    assert!(max_b >= before_drill.parse::<u64>().unwrap(), "site B has orders up to {max_b}, A had {before_drill} before the drill");
    assert!(committed.contains(&max_b), "site B's newest order is one A committed");
    assert_eq!(on_b("SELECT count(*) FROM bascule_failover_probe"), "1");

    // the report: RTO and RPO measured; RPO from the heartbeat found on B
    let report_file = s.path("controller-state/reports/drill-1.json");
    let rep: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report_file).unwrap()).unwrap();
    assert_eq!(rep["verdict"], "PASS", "{rep:#}");
    let rpo = rep["rpo"]["measured_seconds"].as_f64().unwrap_or_else(|| panic!("RPO not measured: {rep:#}"));
    let rto = rep["rto"]["measured_seconds"].as_f64().unwrap();
    assert!(rpo < 30.0, "RPO {rpo} s with a heartbeat every second and the segment ended just before the cut");
    assert!(rto > 0.0 && rto < 600.0, "RTO {rto} s");
    let beat = on_b("SELECT to_char(max(at) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS') FROM bascule.heartbeat");
    assert!(
        rep["recovery_point"].as_str().unwrap().starts_with(&beat),
        "recovery point {} is B's newest heartbeat {beat}",
        rep["recovery_point"]
    );
    check_steps(&rep, standby, rto);

    // the signed JSON report is on both providers, and its signature is the controller's
    let key = bascule_core::keys::AgentKey::load(&s.path("controller-state/report-signing.key")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for g in [&s.a, &s.b] {
        let cfg: Vec<bascule_core::provider::ProviderConfig> =
            bascule_core::config::parse_yaml(&g.provider_yaml(s.dir.path(), "fleet"), std::path::Path::new("test")).unwrap();
        let reports = bascule_core::provider::Provider::build(&cfg[0], std::path::Path::new("test")).unwrap().tenant("reports");
        let listing = rt.block_on(reports.list("drills/saas-failover/")).unwrap();
        let k = listing.keys().next().unwrap_or_else(|| panic!("no report on {}", cfg[0].name)).clone();
        let bytes = rt.block_on(reports.get(&k, u64::MAX)).unwrap().unwrap();
        let (signed, _): (serde_json::Value, _) =
            bascule_core::signed::open(bascule_core::signed::Kind::Report, &bytes, &[key.verify_key()], &k).expect("signature verifies");
        assert_eq!(signed["verdict"], "PASS");
        assert!(bascule_core::signed::open::<serde_json::Value>(
            bascule_core::signed::Kind::Report,
            &bytes,
            &[bascule_core::keys::AgentKey::generate().verify_key()],
            &k
        )
        .is_err());
    }
}

#[test]
fn a_signed_report_verifies_offline_and_a_tampered_copy_does_not() {
    let d = tempfile::tempdir().unwrap();
    let cfg = controller(d.path());
    let rb = d.path().join("quick.yaml");
    bascule_tests::write(
        &rb,
        "name: quick\ntargets: { rto: 1h }\nstages:\n  - name: only\n    steps:\n      - id: cut\n        shell: { command: \"true\" }\n        rto: start\n      - id: back\n        shell: { command: \"true\" }\n        rto: end\n",
    );
    let o = run(Command::new(bin("bascule-controller")).args(["drill", "run", "--config"]).arg(&cfg).arg(&rb));
    assert!(text(&o).contains("drill 1"), "{}", text(&o));
    let key = ok(Command::new(bin("bascule-controller")).args(["verify-key", "--config"]).arg(&cfg)).trim().to_string();
    let dir = d.path().join("b/reports/drills/quick");
    let file = std::fs::read_dir(&dir).unwrap().flatten().next().unwrap_or_else(|| panic!("no report in {}", dir.display())).path();
    let verify =
        |f: &std::path::Path, k: &str| run(Command::new(bin("bascule-controller")).args(["report", "verify"]).arg(f).args(["--key", k]));

    let o = verify(&file, &key);
    assert!(o.status.success() && text(&o).contains("VERIFIED: signed by") && text(&o).contains("drill 1 (quick"), "{}", text(&o));
    // one figure changed in a copy: refused
    let original = std::fs::read_to_string(&file).unwrap();
    let tampered = d.path().join("tampered.json");
    let changed = original.replacen("\"attempts\":1", "\"attempts\":2", 1);
    assert_ne!(changed, original);
    bascule_tests::write(&tampered, &changed);
    let o = verify(&tampered, &key);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("NOT VERIFIED") && text(&o).contains("signature"), "{}", text(&o));
    // empty, truncated, garbage and oversized files: refused, never a panic
    let bytes = std::fs::read(&file).unwrap();
    let huge = vec![b'x'; 17 << 20];
    for (what, content) in [
        ("empty", &b""[..]),
        ("truncated", &bytes[..bytes.len() / 2]),
        ("garbage", &b"\xff\xfe not a report"[..]),
        ("oversized", &huge[..]),
    ] {
        let f = d.path().join(format!("{what}.json"));
        std::fs::write(&f, content).unwrap();
        let o = verify(&f, &key);
        assert_eq!(o.status.code(), Some(1), "{what}: {}", text(&o));
        assert!(text(&o).contains("NOT VERIFIED"), "{what}: {}", text(&o));
    }
    // another key: refused
    let other = ok(Command::new(bin("bascule-agent")).arg("keygen").arg("--out").arg(d.path().join("other.key"))).trim().to_string();
    let o = verify(&file, &other);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
}
