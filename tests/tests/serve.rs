//! `bascule-controller serve`: the API (tokens, roles, bodies, audit), TLS,
//! the monitor and its metrics, and the alert rules in a real Prometheus.
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use bascule_tests::http::{curl, get, metric};
use bascule_tests::{bin, free_port, ok, run, text, wait_until, write, KillOnDrop};

const MINUTE: Duration = Duration::from_secs(60);

/// `bascule-controller token`: (the token, its config line).
fn token(name: &str, role: &str) -> (String, String) {
    let o = run(Command::new(bin("bascule-controller")).args(["token", "--name", name, "--role", role]));
    assert!(o.status.success(), "{}", text(&o));
    let tok = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let line = String::from_utf8_lossy(&o.stderr).lines().find(|l| l.contains("hash:")).unwrap().trim().to_string();
    (tok, line)
}

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
    wait_until("the drill passes", MINUTE, || {
        let (_, b) = curl("GET", &format!("{drills}/{id}"), Some(&viewer), None, &[]);
        serde_json::from_str::<serde_json::Value>(&b).is_ok_and(|r| r["verdict"] == "PASS")
    });
    assert!(d.path().join("ran").exists());
    // its measures reach /metrics at the next monitor cycle
    wait_until("the drill's metrics", MINUTE, || {
        metric(&get(&format!("{base}/metrics")), "bascule_rto_target_seconds{runbook=\"quick\"}") == Some(3600.0)
    });
    let m = get(&format!("{base}/metrics"));
    assert!(m.contains("bascule_drill_last_run_timestamp_seconds{result=\"pass\",runbook=\"quick\"}"), "{m}");
    assert!(m.contains("bascule_provider_up{provider=\"a\"} 1"), "{m}");

    // every call is in the audit log, refusals included, and the chain holds
    let a = run(Command::new(bin("bascule-controller")).args(["drill", "audit", "--verify", "--config"]).arg(&cfg));
    assert!(a.status.success(), "{}", text(&a));
    let store = bascule_controller::drill::store::Store::open(&d.path().join("state/drills.sqlite")).unwrap();
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

#[test]
fn the_api_serves_https_when_configured() {
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
    let port = free_port();
    let cfg = d.path().join("controller.yaml");
    write(
        &cfg,
        &format!(
            "state_dir: {d}/state\n{p}tenants: []\nserve:\n  listen: 127.0.0.1:{port}\n  tls: {{ cert: {c}, key: {k} }}\n  tokens:\n    {viewer_line}\n",
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
}
