//! The operator boundary: what an operator passes (`--var`, the API's
//! `vars`) and what a database returns (`save_as`) is data, never code; a
//! value that breaks its variable's pattern starts nothing.
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use bascule_tests::http::curl;
use bascule_tests::{bin, free_port, run, text, wait_until, write, KillOnDrop, PgCluster};

const MINUTE: Duration = Duration::from_secs(60);

/// Every way a value could become code: a command separator, a command
/// substitution both ways, a quote, a newline, an SQL quote, a DSN field.
fn payload(pwn: &Path) -> String {
    let p = pwn.display();
    format!("x; touch {p}/semicolon $(touch {p}/dollar) `touch {p}/backtick` \" ' OR '1'='1 \n dbname=postgres | touch {p}/pipe")
}

/// A runbook where `host` reaches each kind of field, and a value read out
/// of the database reaches them again; each check compares what arrived
/// with what was sent.
fn runbook(dir: &Path, pg: &PgCluster, pwn: &Path) -> std::path::PathBuf {
    let dsn = |extra: &str| format!("host=127.0.0.1 port={} user=bascule dbname=postgres{extra}", pg.port);
    let rb = dir.join("inject.yaml");
    write(
        &rb,
        &format!(
            r#"name: inject
variables:
  host: plain
  echoed: ""
  app: ""
  from_db: ""
stages:
  - name: send
    steps:
      - id: shell
        shell: {{ command: 'echo "$host"; echo $host; [ -n "$host" ]' }}
      - id: bind
        sql: {{ dsn: "{d1}", query: "SELECT $1::text", params: ["${{host}}"], save_as: echoed }}
      - id: dsn-field
        sql: {{ dsn: "{d2}", query: "SELECT current_setting('application_name')", save_as: app }}
      - id: from-db
        sql: {{ dsn: "{d1}", query: "SELECT 'y; touch {p}/db-semicolon' || chr(10) || '$(touch {p}/db-dollar)' || ' `touch {p}/db-backtick`'", save_as: from_db }}
      - id: url
        http: {{ url: "http://127.0.0.1:1/${{host}}?q=${{host}}" }}
        critical: false
  - name: compare
    steps:
      - id: arrived-whole
        shell: {{ command: '[ "$echoed" = "$host" ] && [ "$app" = "$(printf %s "$host" | head -c 63)" ] || {{ echo "sent [$host] got [$echoed] [$app]"; exit 1; }}' }}
      - id: db-value-as-data
        shell: {{ command: 'echo "$from_db"; echo $from_db' }}
      - id: db-value-bound
        sql: {{ dsn: "{d1}", query: "SELECT $1::text = $2::text", params: ["${{from_db}}", "${{from_db}}"], expect: "t" }}
"#,
            d1 = dsn(""),
            d2 = dsn(" application_name=${host}"),
            p = pwn.display(),
        ),
    );
    rb
}

fn controller(dir: &Path, extra: &str) -> std::path::PathBuf {
    let cfg = dir.join("controller.yaml");
    write(
        &cfg,
        &format!(
            "state_dir: {d}/state\nproviders:\n  - {{ name: a, url: \"file://{d}/a\" }}\n  - {{ name: b, url: \"file://{d}/b\" }}\ntenants: []\n{extra}",
            d = dir.display()
        ),
    );
    cfg
}

/// `bascule-controller token`: (the token, its config line).
fn token(name: &str, role: &str) -> (String, String) {
    let tok = run(Command::new(bin("bascule-controller")).args(["token", "--name", name, "--role", role]));
    let token = String::from_utf8_lossy(&tok.stdout).trim().to_string();
    let line = String::from_utf8_lossy(&tok.stderr).lines().find(|l| l.contains("hash:")).unwrap().trim().to_string();
    (token, line)
}

/// `serve` with these tokens and runbooks: the process, its URL, its config.
fn serve(dir: &Path, runbooks: &Path, tokens: &[String]) -> (KillOnDrop, String, std::path::PathBuf) {
    let port = free_port();
    let lines: String = tokens.iter().map(|l| format!("    {l}\n")).collect();
    let cfg = controller(
        dir,
        &format!("serve:\n  listen: 127.0.0.1:{port}\n  interval: 1s\n  runbooks_dir: {}\n  tokens:\n{lines}", runbooks.display()),
    );
    let guard = bascule_tests::spawn_serve(&cfg, &dir.join("serve.log"));
    let base = format!("http://127.0.0.1:{port}");
    wait_until("serve", MINUTE, || curl("GET", &format!("{base}/healthz"), None, None, &[]).0 == 200);
    (guard, base, cfg)
}

fn nothing_created(pwn: &Path, how: &str) {
    let made: Vec<_> = std::fs::read_dir(pwn).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(made.is_empty(), "{how}: a value ran as code and created {made:?}");
}

#[test]
fn values_from_the_command_line_the_api_and_the_database_run_nothing() {
    let d = tempfile::tempdir().unwrap();
    let pg = PgCluster::start();
    let pwn = d.path().join("pwn");
    std::fs::create_dir(&pwn).unwrap();
    let rb = runbook(d.path(), &pg, &pwn);

    // --var
    let cfg = controller(d.path(), "");
    let o = run(Command::new(bin("bascule-controller"))
        .args(["drill", "run", "--config"])
        .arg(&cfg)
        .arg(&rb)
        .arg("--var")
        .arg(format!("host={}", payload(&pwn))));
    let out = text(&o);
    assert!(o.status.success() && out.contains("PASS"), "the values arrived whole, as data:\n{out}");
    nothing_created(&pwn, "--var");

    // the API's vars, from an operator's token
    let api_dir = d.path().join("api");
    std::fs::create_dir(&api_dir).unwrap();
    std::fs::copy(&rb, api_dir.join("inject.yaml")).unwrap();
    let (token, line) = token("bob", "operator");
    let (_serve, base, cfg) = serve(d.path(), &api_dir, &[line]);
    let body = serde_json::json!({ "runbook": "inject", "vars": { "host": payload(&pwn) } }).to_string();
    let (code, answer) = curl("POST", &format!("{base}/v1/drills"), Some(&token), Some(&body), &[]);
    assert_eq!(code, 202, "{answer}");
    let id = serde_json::from_str::<serde_json::Value>(&answer).unwrap()["id"].as_i64().unwrap();
    let mut last = String::new();
    wait_until("the API's drill to end", MINUTE, || {
        last = curl("GET", &format!("{base}/v1/drills/{id}"), Some(&token), None, &[]).1;
        serde_json::from_str::<serde_json::Value>(&last).is_ok_and(|r| r["finished_at"].is_string())
    });
    assert!(last.contains("\"PASS\""), "{last}");
    nothing_created(&pwn, "the API");

    // a value breaking its pattern starts nothing, from either door
    let strict = d.path().join("strict.yaml");
    write(
        &strict,
        &format!(
            "name: strict\nvariables:\n  host: {{ default: db-a, pattern: \"[a-z0-9.-]+\" }}\nstages:\n  - name: s\n    steps:\n      - id: touch\n        shell: {{ command: 'touch {}/ran-$host' }}\n",
            pwn.display()
        ),
    );
    let o =
        run(Command::new(bin("bascule-controller")).args(["drill", "run", "--config"]).arg(&cfg).arg(&strict).args(["--var", "host=a b"]));
    assert!(!o.status.success() && text(&o).contains("does not match the runbook's pattern"), "{}", text(&o));
    std::fs::copy(&strict, api_dir.join("strict.yaml")).unwrap();
    let (code, answer) =
        curl("POST", &format!("{base}/v1/drills"), Some(&token), Some(r#"{"runbook":"strict","vars":{"host":"a;b"}}"#), &[]);
    assert_eq!(code, 400, "{answer}");
    assert!(answer.contains("does not match"), "{answer}");
    nothing_created(&pwn, "a value breaking its pattern");
}

/// An HTTP server that answers every request with 500 and the request
/// itself (its headers included) as the body.
fn echo_server() -> u16 {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let head = format!("HTTP/1.1 500 Internal Server Error\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", req.len());
            let _ = c.write_all(head.as_bytes()).and_then(|_| c.write_all(&req));
        }
    });
    port
}

/// Every process's command line that holds `needle`, sampled until `stop`.
fn watch_argv(needle: String, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> std::thread::JoinHandle<(usize, Vec<String>)> {
    std::thread::spawn(move || {
        let (mut samples, mut found) = (0, Vec::new());
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            for e in std::fs::read_dir("/proc").unwrap().flatten() {
                if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
                    let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                    if cmd.contains(&needle) {
                        found.push(cmd);
                    }
                }
            }
            samples += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        (samples, found)
    })
}

#[test]
fn a_secret_echoed_by_every_step_kind_is_in_no_report_object_log_or_argv() {
    use base64::Engine;
    let s = bascule_tests::Scenario::start(200);
    let o = s.snapshot();
    assert!(o.status.success(), "{}", text(&o));
    let mut raw = [0u8; 12];
    getrandom::getrandom(&mut raw).unwrap();
    let secret = format!("tok-{}", hex::encode(raw));
    let b64 = base64::engine::general_purpose::STANDARD.encode(&secret);
    let port = echo_server();
    s.pg.createdb("restored");
    let dsn = |db: &str| format!("host=127.0.0.1 port={} user=bascule dbname={db} password=${{secret.token}}", s.pg.port);
    let rb = s.path("secret.yaml");
    write(
        &rb,
        &format!(
            r#"name: secret
variables:
  tenant: {tenant}
  identity: {identity}
secrets:
  token: {{ env: BASCULE_TEST_TOKEN }}
stages:
  - name: echo
    steps:
      - id: shell-echo
        shell:
          command: 'echo "token $TOKEN"; printf %s "$TOKEN" | base64; echo "$TOKEN" >&2; sleep 0.3'
          env: {{ TOKEN: "${{secret.token}}" }}
      - id: http-echo
        http: {{ url: "http://127.0.0.1:{port}/probe", headers: {{ Authorization: "Bearer ${{secret.token}}" }} }}
        critical: false
      - id: sql-password
        sql: {{ dsn: "{mairie}", query: "SELECT count(*) FROM citoyens" }}
      - id: shell-fails-saying-it
        shell: {{ command: 'echo "failing with $T"; exit 1', env: {{ T: "${{secret.token}}" }} }}
        critical: false
  - name: restore
    steps:
      - id: restore
        restore: {{ tenant: "${{tenant}}", identity: "${{identity}}", snapshot: latest, target: "{restored}" }}
      - id: rows
        verify:
          row_counts: {{ tenant: "${{tenant}}", identity: "${{identity}}", dsn: "{restored}" }}
          heartbeat: {{ dsn: "{mairie}" }}
        critical: false
"#,
            tenant = s.tenant,
            identity = s.path("customer.key").display(),
            mairie = dsn("mairie"),
            restored = dsn("restored"),
        ),
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = watch_argv(secret.clone(), stop.clone());
    let ctl = |args: &[&str]| {
        let mut c = Command::new(bin("bascule-controller"));
        c.args(args).arg("--config").arg(s.path("controller.yaml"));
        c
    };
    let o = run(ctl(&["drill", "run"]).arg(&rb).env("BASCULE_TEST_TOKEN", &secret).env("RUST_LOG", "info,bascule_controller=debug"));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (samples, in_argv) = watcher.join().unwrap();
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(samples > 10, "argv sampled {samples} times");
    assert!(in_argv.is_empty(), "the secret was in a command line: {in_argv:?}");

    // everything the drill left: its output, the store, the reports, every object on both providers
    let mut places: Vec<(String, Vec<u8>)> = vec![("drill run's output".into(), out.into_bytes())];
    let state = s.path("controller-state");
    for e in walk(&state) {
        places.push((e.display().to_string(), std::fs::read(&e).unwrap()));
    }
    for f in ["md", "html", "json"] {
        let r = run(&mut ctl(&["drill", "report", "1", "--format", f]));
        places.push((format!("drill report --format {f}"), r.stdout));
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for g in [&s.a, &s.b] {
        for tenant in [s.tenant.as_str(), "reports"] {
            let cfg: Vec<bascule_core::provider::ProviderConfig> =
                bascule_core::config::parse_yaml(&g.provider_yaml(s.dir.path(), "fleet"), Path::new("t")).unwrap();
            let r = bascule_core::provider::Provider::build(&cfg[0], Path::new("t")).unwrap().tenant(tenant);
            for k in rt.block_on(r.list("")).unwrap().into_keys() {
                places.push((format!("{} {tenant}/{k}", cfg[0].name), rt.block_on(r.get(&k, u64::MAX)).unwrap().unwrap().to_vec()));
            }
        }
    }
    assert!(places.iter().any(|(p, _)| p.contains("reports/drills/secret")), "the report is on the providers");
    for (place, bytes) in &places {
        let t = String::from_utf8_lossy(bytes);
        assert!(!t.contains(&secret) && !t.contains(&b64), "the secret is in {place}");
    }
    // …and it was echoed: what stands in its place is said
    let report = std::fs::read_to_string(state.join("reports/drill-1.json")).unwrap();
    assert!(report.contains("[secret token]"), "the echoes were redacted, not lost:\n{report}");
    let published = places.iter().find(|(p, _)| p.contains("reports/drills/secret")).unwrap();
    assert!(!String::from_utf8_lossy(&published.1).contains("[secret token]"), "the published copy carries no output at all");
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_failover_is_approved_by_another_person_than_the_one_who_started_it() {
    let d = tempfile::tempdir().unwrap();
    let rb = d.path().join("runbooks");
    std::fs::create_dir(&rb).unwrap();
    write(
        &rb.join("gated.yaml"),
        "name: gated\nstages:\n  - name: ask\n    steps:\n      - id: go\n        approval: { prompt: \"Fail over?\" }\n        timeout: 1m\n",
    );
    let (bob, bob_line) = token("bob", "operator");
    let (alice, alice_line) = token("alice", "operator");
    let (_serve, base, cfg) = serve(d.path(), &rb, &[bob_line, alice_line]);
    let drills = format!("{base}/v1/drills");
    let start = |mode: &str| {
        let (code, body) = curl("POST", &drills, Some(&bob), Some(&format!(r#"{{"runbook":"gated","mode":"{mode}"}}"#)), &[]);
        assert_eq!(code, 202, "{body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"].as_i64().unwrap()
    };
    let approve = |id: i64, who: &str| curl("POST", &format!("{drills}/{id}/approve"), Some(who), Some(r#"{"step":"go"}"#), &[]);
    let verdict = |id: i64| {
        let mut v = serde_json::Value::Null;
        wait_until("the drill to end", MINUTE, || {
            v = serde_json::from_str(&curl("GET", &format!("{drills}/{id}"), Some(&bob), None, &[]).1).unwrap_or_default();
            v["finished_at"].is_string()
        });
        v["verdict"].as_str().unwrap_or_default().to_string()
    };

    // a failover bob started: bob cannot approve it, alice can
    let id = start("failover");
    let (code, body) = approve(id, &bob);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("four eyes"), "{body}");
    // nor can bob's OS account on the controller's host, having started one there
    let cli = Command::new(bin("bascule-controller"))
        .args(["drill", "run", "--mode", "failover", "--config"])
        .arg(&cfg)
        .arg(rb.join("gated.yaml"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _cli = KillOnDrop(cli);
    let store = || bascule_controller::state::Store::open(&d.path().join("state/drills.sqlite")).unwrap();
    wait_until("the command line's drill to start", MINUTE, || store().drills().unwrap().len() == 2);
    let cli_id = store().drills().unwrap().iter().map(|r| r.id).max().unwrap();
    let o = run(Command::new(bin("bascule-controller")).args(["drill", "approve", "--config"]).arg(&cfg).arg(cli_id.to_string()).arg("go"));
    assert!(!o.status.success() && text(&o).contains("four eyes"), "{}", text(&o));
    assert_eq!(approve(cli_id, &alice).0, 200);
    assert_eq!(approve(id, &alice).0, 200);
    assert_eq!(verdict(id), "PASS");
    // a drill (not a failover) bob started: bob may approve it
    let id = start("drill");
    assert_eq!(approve(id, &bob).0, 200);
    assert_eq!(verdict(id), "PASS");
}

#[test]
fn the_controllers_files_are_private_and_a_key_others_may_read_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let cfg = controller(d.path(), "");
    let rb = d.path().join("rb.yaml");
    write(&rb, "name: t\nstages:\n  - name: s\n    steps:\n      - id: hi\n        shell: { command: 'echo hi' }\n");
    let drill = || run(Command::new(bin("bascule-controller")).args(["drill", "run", "--config"]).arg(&cfg).arg(&rb));
    let o = drill();
    assert!(o.status.success(), "{}", text(&o));
    let mode = |p: &Path| std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode() & 0o777;
    let state = d.path().join("state");
    assert_eq!(mode(&state), 0o700, "the state folder");
    for f in ["drills.sqlite", "report-signing.key", "reports/drill-1.json"] {
        assert_eq!(mode(&state.join(f)), 0o600, "{f}");
    }
    assert_eq!(mode(&state.join("reports")), 0o700);
    // a signing key its group may read is refused, saying how to mend it
    let key = state.join("report-signing.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let o = drill();
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains(&format!("chmod 600 {}", key.display())), "{}", text(&o));
    // and an agent key file others may read, likewise
    let agent_key = d.path().join("agent.key");
    let k = run(Command::new(bin("bascule-agent")).arg("keygen").arg("--out").arg(&agent_key));
    assert!(k.status.success(), "{}", text(&k));
    assert_eq!(mode(&agent_key), 0o600);
    std::fs::set_permissions(&agent_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(bascule_core::keys::AgentKey::load(&agent_key).unwrap_err().to_string().contains("chmod 600"));
}
