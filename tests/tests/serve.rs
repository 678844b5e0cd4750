//! `bascule-controller serve`: the API (tokens, roles, bodies, audit), TLS,
//! the monitor and its metrics, and the alert rules in a real Prometheus.
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use bascule_tests::http::{curl, get, metric};
use bascule_tests::{bin, free_port, ok, run, text, token, wait_until, write, KillOnDrop};

const MINUTE: Duration = Duration::from_secs(60);

/// Starts `serve`; its log in `dir/serve.log`; waits for /healthz.
fn serve(cfg: &Path, dir: &Path, base: &str, curl_extra: &[&str]) -> KillOnDrop {
    let log = std::fs::File::create(dir.join("serve.log")).unwrap();
    let child = Command::new(bin("bascule-controller"))
        .args(["serve", "--config"])
        .arg(cfg)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let guard = KillOnDrop(child);
    wait_until("serve answers /healthz", MINUTE, || curl("GET", &format!("{base}/healthz"), None, None, curl_extra).0 == 200);
    guard
}

fn file_providers(d: &Path) -> String {
    format!("providers:\n  - {{ name: a, url: \"file://{d}/a\" }}\n  - {{ name: b, url: \"file://{d}/b\" }}\n", d = d.display())
}

#[test]
fn the_api_checks_tokens_roles_and_bodies_and_audits_every_call() {
    let d = tempfile::tempdir().unwrap();
    let (viewer, viewer_line) = token("alice", "viewer");
    let (operator, operator_line) = token("bob", "operator");
    let runbooks = d.path().join("runbooks");
    std::fs::create_dir(&runbooks).unwrap();
    write(
        &runbooks.join("gated.yaml"),
        "name: gated\nstages:\n  - name: ask\n    steps:\n      - id: go\n        approval: { prompt: \"Go ahead?\" }\n        timeout: 1m\n",
    );
    write(
        &runbooks.join("quick.yaml"),
        &format!(
            "name: quick\ntargets: {{ rto: 1h }}\nvariables: {{ out: \"{}/ran\" }}\nstages:\n  - name: only\n    steps:\n      - id: touch\n        shell: {{ command: \"touch ${{out}}\" }}\n",
            d.path().display()
        ),
    );
    let port = free_port();
    let cfg = d.path().join("controller.yaml");
    write(
        &cfg,
        &format!(
            "state_dir: {d}/state\n{p}tenants: []\nserve:\n  listen: 127.0.0.1:{port}\n  interval: 1s\n  runbooks_dir: {rb}\n  tokens:\n    {viewer_line}\n    {operator_line}\n",
            d = d.path().display(),
            p = file_providers(d.path()),
            rb = runbooks.display()
        ),
    );
    let base = format!("http://127.0.0.1:{port}");
    let _serve = serve(&cfg, d.path(), &base, &[]);
    let drills = format!("{base}/v1/drills");

    // no token, a wrong token: 401
    let (code, body) = curl("GET", &drills, None, None, &[]);
    assert_eq!(code, 401, "{body}");
    assert_eq!(curl("GET", &drills, Some("bsc_not-a-token"), None, &[]).0, 401);
    // a viewer reads, but may not start a drill: 403
    assert_eq!(curl("GET", &drills, Some(&viewer), None, &[]).0, 200);
    assert_eq!(curl("GET", &format!("{base}/v1/tenants"), Some(&viewer), None, &[]).0, 200);
    let (code, body) = curl("POST", &drills, Some(&viewer), Some(r#"{"runbook":"quick"}"#), &[]);
    assert_eq!(code, 403, "{body}");
    assert!(!d.path().join("ran").exists());
    // malformed bodies: 400 with a message
    for (bad_body, says) in [
        (r#"{"runbook": 5}"#, "runbook"),
        (r#"{"runbook": "quick", "colour": "red"}"#, "colour"),
        (r#"{"runbook": "../../etc/passwd"}"#, "file name"),
        (r#"{"runbook": "nope"}"#, "no runbook"),
        (r#"{"runbook": "quick", "mode": "rehearsal"}"#, "mode"),
        (r#"{"runbook": "quick", "vars": {"x": "1"}}"#, "vars.x"),
        ("not json", "json"),
    ] {
        let (code, body) = curl("POST", &drills, Some(&operator), Some(bad_body), &[]);
        assert_eq!(code, 400, "{bad_body}: {body}");
        assert!(body.to_lowercase().contains(says), "{bad_body}: {body}");
    }
    // an operator starts it: 202, and it runs
    let (code, body) = curl("POST", &drills, Some(&operator), Some(r#"{"runbook":"quick"}"#), &[]);
    assert_eq!(code, 202, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let id = v["id"].as_i64().unwrap();
    let t0 = std::time::Instant::now();
    loop {
        let (_, b) = curl("GET", &format!("{drills}/{id}"), Some(&viewer), None, &[]);
        if serde_json::from_str::<serde_json::Value>(&b).is_ok_and(|r| r["verdict"] == "PASS") {
            break;
        }
        let log = std::fs::read_to_string(d.path().join("serve.log")).unwrap_or_default();
        assert!(t0.elapsed() < 2 * MINUTE, "the drill did not pass: {b}\nserve's log:\n{log}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(d.path().join("ran").exists());
    // its measures reach /metrics at the next monitor cycle
    wait_until("the drill's metrics", MINUTE, || {
        metric(&get(&format!("{base}/metrics")), "bascule_rto_target_seconds{runbook=\"quick\"}") == Some(3600.0)
    });
    let m = get(&format!("{base}/metrics"));
    assert!(m.contains("bascule_drill_last_run_timestamp_seconds{result=\"pass\",runbook=\"quick\"}"), "{m}");
    assert!(m.contains("bascule_provider_up{provider=\"a\"} 1"), "{m}");

    // an approval step answered through the API
    let (code, body) = curl("POST", &drills, Some(&operator), Some(r#"{"runbook":"gated"}"#), &[]);
    assert_eq!(code, 202, "{body}");
    let gated = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"].as_i64().unwrap();
    let approve = format!("{drills}/{gated}/approve");
    assert_eq!(curl("POST", &approve, Some(&viewer), Some(r#"{"step":"go"}"#), &[]).0, 403);
    let (code, body) = curl("POST", &approve, Some(&operator), Some(r#"{"step":"nope"}"#), &[]);
    assert!(code == 400 && body.contains("no approval step"), "{code} {body}");
    let (code, body) = curl("POST", &approve, Some(&operator), Some(r#"{"step":"go"}"#), &[]);
    assert_eq!(code, 200, "{body}");
    wait_until("the gated drill passes", MINUTE, || {
        let (_, b) = curl("GET", &format!("{drills}/{gated}"), Some(&viewer), None, &[]);
        serde_json::from_str::<serde_json::Value>(&b)
            .is_ok_and(|r| r["verdict"] == "PASS" && r["steps"][0]["output"] == "approved by api:bob")
    });
    assert_eq!(curl("POST", &approve, Some(&operator), Some(r#"{"step":"go"}"#), &[]).0, 409, "the drill is over");

    // every call is in the audit log, refusals included, and the chain holds
    let a = run(Command::new(bin("bascule-controller")).args(["drill", "audit", "--verify", "--config"]).arg(&cfg));
    assert!(a.status.success(), "{}", text(&a));
    let store = bascule_controller::state::Store::open(&d.path().join("state/drills.sqlite")).unwrap();
    let rows: Vec<String> = store
        .connection()
        .prepare("SELECT actor || ' ' || detail FROM audit WHERE event = 'api' ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for want in [
        "api:anonymous GET /v1/drills → 401",
        "api:alice POST /v1/drills → 403",
        "api:bob POST /v1/drills → 400",
        "api:bob POST /v1/drills → 202",
    ] {
        assert!(rows.iter().any(|r| r.starts_with(want)), "no {want:?} in {rows:#?}");
    }
    assert!(!rows.iter().any(|r| r.contains(&operator) || r.contains(&viewer)), "a token in the audit log");
}

/// Seconds curl spent on one GET /healthz (connection and TLS included).
fn healthz_seconds(base: &str, ca: &[&str]) -> f64 {
    let o = run(Command::new("curl")
        .args(["-s", "-o", "/dev/null", "--max-time", "60", "-w", "%{http_code} %{time_total}"])
        .args(ca)
        .arg(format!("{base}/healthz")));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let (code, secs) = out.split_once(' ').unwrap_or_else(|| panic!("curl: {out}"));
    assert_eq!(code, "200", "{out}");
    secs.trim().parse().unwrap()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
fn the_https_api_holds_under_abuse() {
    let d = tempfile::tempdir().unwrap();
    let (cert, key) = (d.path().join("cert.pem"), d.path().join("key.pem"));
    ok(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
        ])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert));
    let (viewer, viewer_line) = token("carol", "viewer");
    let (operator, operator_line) = token("dave", "operator");
    let port = free_port();
    let cfg = d.path().join("controller.yaml");
    write(
        &cfg,
        &format!(
            "state_dir: {d}/state\n{p}tenants: []\nserve:\n  listen: 127.0.0.1:{port}\n  tls: {{ cert: {c}, key: {k} }}\n  metrics_token: true\n  tokens:\n    {viewer_line}\n    {operator_line}\n",
            d = d.path().display(),
            p = file_providers(d.path()),
            c = cert.display(),
            k = key.display()
        ),
    );
    let base = format!("https://127.0.0.1:{port}");
    let ca = ["--cacert", cert.to_str().unwrap()];
    let _serve = serve(&cfg, d.path(), &base, &ca);
    assert_eq!(curl("GET", &format!("{base}/v1/drills"), Some(&viewer), None, &ca).0, 200);
    // plain HTTP on the TLS port gets nothing
    assert_ne!(curl("GET", &format!("http://127.0.0.1:{port}/healthz"), None, None, &[]).0, 200);

    // idle TCP connections that never start their handshake do not hold the listener
    let before = median((0..5).map(|_| healthz_seconds(&base, &ca)).collect());
    let idle: Vec<std::net::TcpStream> = (0..20).map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let during: Vec<f64> = (0..5).map(|_| healthz_seconds(&base, &ca)).collect();
    eprintln!("/healthz: {before:.4} s alone, {during:?} s with {} idle connections", idle.len());
    assert!(median(during.clone()) <= before + 0.100, "idle connections delay /healthz: {before} s before, {during:?} s with them");
    assert!(during.iter().all(|s| *s < 1.0), "{during:?}");

    // /metrics asks for a token when metrics_token says so
    let metrics = format!("{base}/metrics");
    assert_eq!(curl("GET", &metrics, None, None, &ca).0, 401);
    let (code, m) = curl("GET", &metrics, Some(&viewer), None, &ca);
    assert_eq!(code, 200, "{m}");
    assert!(m.contains("bascule_api_refusals_total"), "{m}");

    // refusals: the address gets its share (the /metrics refusal above included), then 429
    let headers = d.path().join("headers");
    let mut codes = Vec::new();
    for _ in 0..34 {
        let extra = [ca[0], ca[1], "-D", headers.to_str().unwrap()];
        codes.push(curl("GET", &format!("{base}/v1/tenants"), Some("bsc_guessed"), None, &extra).0);
    }
    let answered = codes.iter().filter(|c| **c == 401).count();
    let limited = codes.iter().filter(|c| **c == 429).count();
    assert_eq!((answered, limited), (29, 5), "{codes:?}");
    assert!(codes[..29].iter().all(|c| *c == 401), "{codes:?}");
    let h = std::fs::read_to_string(&headers).unwrap().to_lowercase();
    assert!(h.contains("retry-after: 60"), "{h}");
    // a valid token from the same address is not held back
    let (code, m) = curl("GET", &metrics, Some(&viewer), None, &ca);
    assert_eq!(code, 200);
    assert_eq!(metric(&m, "bascule_api_refusals_total{outcome=\"limited\"}"), Some(5.0), "{m}");
    assert_eq!(metric(&m, "bascule_api_refusals_total{outcome=\"answered\"}"), Some(30.0), "{m}");

    // a body over the limit: 413, and the operator's small mistakes are still 400
    let big = format!("{{\"runbook\": \"{}\"}}", "x".repeat(100 * 1024));
    let (code, body) = curl("POST", &format!("{base}/v1/drills"), Some(&operator), Some(&big), &ca);
    assert_eq!(code, 413, "{body}");
    assert!(body.contains("65536 bytes"), "{body}");
    assert_eq!(curl("POST", &format!("{base}/v1/drills"), Some(&operator), Some("not json"), &ca).0, 400);

    // the refusals reach the audit log in batches: one row each for the
    // answered ones, a summary row per batch for the limited ones, the chain intact
    wait_until("the refusals are in the audit log", MINUTE, || {
        let store = bascule_controller::state::Store::open(&d.path().join("state/drills.sqlite")).unwrap();
        let rows: Vec<String> = store
            .connection()
            .prepare("SELECT detail FROM audit WHERE actor = 'api:anonymous' ORDER BY seq")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        // the five 429s may straddle two batches: their summary rows add up to five
        let limited: u64 = rows
            .iter()
            .filter_map(|r| r.strip_suffix(" more refusal(s) from 127.0.0.1 answered 429 (over 30 a minute)"))
            .map(|n| n.parse::<u64>().unwrap())
            .sum();
        rows.iter().filter(|r| r.ends_with("→ 401: unknown token (from 127.0.0.1)")).count() == 29
            && rows.iter().filter(|r| r.contains("(from 127.0.0.1)")).count() == 30
            && limited == 5
    });
    let a = run(Command::new(bin("bascule-controller")).args(["drill", "audit", "--verify", "--config"]).arg(&cfg));
    assert!(a.status.success(), "{}", text(&a));
    drop(idle);
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[test]
fn the_monitor_watches_two_thousand_tenants_within_its_interval() {
    const TENANTS: usize = 2_000;
    const INTERVAL: u64 = 30;
    let d = bascule_tests::shared_tempdir();
    let (a, b) = (bascule_tests::Garage::start("provider-a"), bascule_tests::Garage::start("provider-b"));
    let providers = format!("{}{}", a.provider_yaml(d.path(), "fleet"), b.provider_yaml(d.path(), "fleet"));
    let key = bascule_core::keys::AgentKey::generate();
    let names: Vec<String> = (0..TENANTS).map(|i| format!("mairie-{i:04}")).collect();

    // every tenant's signed HEAD on both providers
    let cfgs: Vec<bascule_core::provider::ProviderConfig> = bascule_core::config::parse_yaml(&providers, Path::new("test")).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let t0 = std::time::Instant::now();
    bascule_tests::put_heads(&rt, &providers, &names, &key, 7);
    println!("{} signed HEADs written in {:.1} s", 2 * TENANTS, t0.elapsed().as_secs_f64());
    // one provider serves a HEAD of the last tenant signed by a key that is not its agent's
    rt.block_on(async {
        let forger = bascule_core::keys::AgentKey::generate();
        let head = bascule_core::head::Head {
            format: 1,
            tenant: names[TENANTS - 1].clone(),
            sequence: 8,
            latest_snapshot: None,
            latest_wal: Some("000000010000000000000043".into()),
            agent_time: chrono::Utc::now(),
            restore_test: None,
        };
        let bytes = bascule_core::signed::sign(bascule_core::signed::Kind::Head, &head, &forger);
        let b = bascule_core::provider::Provider::build(&cfgs[1], Path::new("test")).unwrap();
        b.tenant(&names[TENANTS - 1]).put("HEAD", bytes.into()).await.unwrap();
    });

    let port = free_port();
    let mut tenants = String::new();
    for n in &names {
        tenants.push_str(&format!("  - {{ name: {n}, verify_keys: [\"{}\"] }}\n", key.verify_key()));
    }
    let cfg = d.path().join("controller.yaml");
    write(
        &cfg,
        &format!(
            "state_dir: {}/state\nproviders:\n{providers}tenants:\n{tenants}serve:\n  listen: 127.0.0.1:{port}\n  interval: {INTERVAL}s\n  concurrency: 64\n",
            d.path().display()
        ),
    );
    let base = format!("http://127.0.0.1:{port}");
    let server = serve(&cfg, d.path(), &base, &[]);
    let pid = server.0.id();
    let cycle = |n: f64| -> (f64, f64) {
        // polled once a second: a scrape of 2,000 tenants' metrics costs CPU too
        let t0 = std::time::Instant::now();
        while !metric(&get(&format!("{base}/metrics")), "bascule_monitor_last_cycle_timestamp_seconds").is_some_and(|t| t > n) {
            assert!(t0.elapsed() < Duration::from_secs(3 * INTERVAL), "no monitor cycle");
            std::thread::sleep(Duration::from_secs(1));
        }
        let m = get(&format!("{base}/metrics"));
        (metric(&m, "bascule_monitor_last_cycle_timestamp_seconds").unwrap(), metric(&m, "bascule_monitor_cycle_seconds").unwrap())
    };
    // the first cycle reads every HEAD and lists every tenant on both providers
    let (t1, first) = cycle(0.0);
    let cpu1 = cpu_seconds(pid);
    // then nothing changed: one conditional GET per tenant and provider
    let (_, steady) = cycle(t1);
    let cpu2 = cpu_seconds(pid);
    let m = get(&format!("{base}/metrics"));
    println!(
        "{TENANTS} tenants × 2 providers: first cycle {first:.2} s, steady cycle {steady:.2} s; {:.2} s of CPU from the end of one to the end of the other, scrapes included (interval {INTERVAL} s)",
        cpu2 - cpu1
    );
    assert!(first < INTERVAL as f64 && steady < INTERVAL as f64, "first {first} s, steady {steady} s");
    assert_eq!(metric(&m, "bascule_monitor_tenants"), Some(TENANTS as f64));
    assert_eq!(metric(&m, "bascule_provider_up{provider=\"provider-a\"}"), Some(1.0));
    let lag = metric(&m, "bascule_replication_lag_seconds{provider=\"provider-b\",tenant=\"mairie-1998\"}").expect("lag of a tenant");
    assert!(lag > 0.0 && lag < 600.0, "{lag}");
    // every HEAD verified: the forged one refused (at each cycle), no other
    let forged = metric(&m, "bascule_integrity_failures_total{provider=\"provider-b\",reason=\"bad_signature\",tenant=\"mairie-1999\"}");
    assert!(forged.is_some_and(|n| n >= 2.0), "{forged:?}");
    assert_eq!(m.matches("bascule_integrity_failures_total{").count(), 1, "one refusal only");
    assert!(
        metric(&m, "bascule_replication_lag_seconds{provider=\"provider-b\",tenant=\"mairie-1999\"}").is_none(),
        "no lag from a forged HEAD"
    );
    let log = std::fs::read_to_string(d.path().join("serve.log")).unwrap();
    assert!(log.contains("refused=1 errors=0"), "{}", &log[log.len().saturating_sub(2000)..]);
}

#[test]
fn a_drill_stopped_by_sigterm_stops_everything_its_step_started() {
    let d = tempfile::tempdir().unwrap();
    let (operator, operator_line) = token("bob", "operator");
    let runbooks = d.path().join("runbooks");
    std::fs::create_dir(&runbooks).unwrap();
    let pidfile = d.path().join("grandchild.pid");
    // the step's shell starts a process of its own, then waits
    write(
        &runbooks.join("long.yaml"),
        &format!(
            "name: long\ntargets: {{ rto: 1h }}\nstages:\n  - name: only\n    steps:\n      - id: wait\n        shell: {{ command: \"sleep 600 & echo $! > {}; wait\" }}\n        timeout: 20m\n",
            pidfile.display()
        ),
    );
    let port = free_port();
    let cfg = d.path().join("controller.yaml");
    write(
        &cfg,
        &format!(
            "state_dir: {d}/state\n{p}tenants: []\nserve:\n  listen: 127.0.0.1:{port}\n  interval: 1s\n  runbooks_dir: {rb}\n  tokens:\n    {operator_line}\n",
            d = d.path().display(),
            p = file_providers(d.path()),
            rb = runbooks.display()
        ),
    );
    let base = format!("http://127.0.0.1:{port}");
    let server = serve(&cfg, d.path(), &base, &[]);
    let (code, body) = curl("POST", &format!("{base}/v1/drills"), Some(&operator), Some(r#"{"runbook":"long"}"#), &[]);
    assert_eq!(code, 202, "{body}");
    wait_until("the step started its process", MINUTE, || std::fs::read_to_string(&pidfile).is_ok_and(|s| !s.trim().is_empty()));
    let pid = std::fs::read_to_string(&pidfile).unwrap().trim().to_string();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    ok(Command::new("kill").args(["-TERM", &server.0.id().to_string()]));
    let gone = || {
        // gone, or a zombie waiting for nobody
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_or(true, |s| s.rsplit_once(')').is_some_and(|(_, r)| r.trim_start().starts_with('Z')))
    };
    let t0 = std::time::Instant::now();
    while !gone() && t0.elapsed() < MINUTE {
        std::thread::sleep(Duration::from_millis(100));
    }
    let stopped = gone();
    let _ = Command::new("kill").args(["-KILL", &pid]).status();
    assert!(
        stopped,
        "the step's own process outlived its drill:\n{}",
        std::fs::read_to_string(d.path().join("serve.log")).unwrap_or_default()
    );
    drop(server);
}
