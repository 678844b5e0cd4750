//! Bad configuration gives one clear error with file, line and field; never a panic.
use std::process::Command;

use bascule_tests::{bin, run, text, write};

const GOOD_RECIPIENT: &str = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";

fn agent_yaml(recipient: &str, schedule: &str, extra: &str) -> String {
    format!(
        "tenant: mairie
key_file: /nonexistent/agent.key
state_dir: /tmp/bascule-config-test
recipients: [{recipient}]
providers:
  - {{ name: a, url: \"file:///tmp/bascule-config-test/a\" }}
  - {{ name: b, url: \"file:///tmp/bascule-config-test/b\" }}
jobs:
  - name: nightly
    schedule: \"{schedule}\"
    source: {{ type: pg_dump, dsn: \"dbname=app\"{extra} }}
"
    )
}

fn snapshot_error(yaml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.yaml");
    write(&path, yaml);
    let o = run(Command::new(bin("bascule-agent")).args(["snapshot", "--job", "nightly", "--config"]).arg(&path));
    assert_eq!(o.status.code(), Some(1), "expected a clean failure:\n{}", text(&o));
    let t = text(&o);
    assert!(!t.contains("panicked"), "{t}");
    assert!(t.contains(&path.display().to_string()), "the error must name the file:\n{t}");
    t
}

#[test]
fn malformed_yaml() {
    let t = snapshot_error("tenant: mairie\nrecipients: [unclosed\n");
    assert!(t.contains("agent.yaml:"), "{t}");
}

#[test]
fn unknown_field_names_line_and_field() {
    let t = snapshot_error(&agent_yaml(GOOD_RECIPIENT, "30 1 * * *", ", colour: blue"));
    assert!(t.contains("agent.yaml:11:"), "line 11 expected:\n{t}");
    assert!(t.contains("jobs[0].source") && t.contains("unknown field `colour`"), "{t}");
}

#[test]
fn invalid_age_recipient() {
    let t = snapshot_error(&agent_yaml("age1notarecipient", "30 1 * * *", ""));
    assert!(t.contains("agent.yaml:4:") && t.contains("recipients[0]") && t.contains("invalid age recipient"), "{t}");
}

#[test]
fn bad_cron_expression() {
    let t = snapshot_error(&agent_yaml(GOOD_RECIPIENT, "every night at 1", ""));
    assert!(t.contains("agent.yaml:10:") && t.contains("jobs[0].schedule") && t.contains("bad cron expression"), "{t}");
    let t = snapshot_error(&agent_yaml(GOOD_RECIPIENT, "61 1 * * *", ""));
    assert!(t.contains("jobs[0].schedule"), "{t}");
}

#[test]
fn secret_inline_is_refused() {
    let yaml = agent_yaml(GOOD_RECIPIENT, "30 1 * * *", ", password: hunter2");
    let t = snapshot_error(&yaml);
    assert!(t.contains("jobs[0].source") && t.contains("never written inline"), "{t}");
    assert!(!t.contains("hunter2"), "a secret must not be echoed back:\n{t}");
}

#[test]
fn missing_key_file_says_what_to_do() {
    let t = snapshot_error(&agent_yaml(GOOD_RECIPIENT, "30 1 * * *", ""));
    assert!(t.contains("/nonexistent/agent.key") && t.contains("bascule-agent keygen"), "{t}");
}

#[test]
fn shipped_configs_parse() {
    // every example in configs/ parses and validates (secrets are resolved later)
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let agent = bascule_agent::config::AgentConfig::load(&root.join("configs/agent.yaml")).unwrap();
    assert_eq!(agent.providers.len(), 2);
    assert_eq!(agent.jobs[0].schedule.text, "30 1 * * *");
    let controller = bascule_controller::config::ControllerConfig::load(&root.join("configs/controller.yaml")).unwrap();
    assert_eq!(controller.providers.len(), 2);
}

#[test]
fn bad_retention_is_named() {
    // an unknown retention field, in the agent's job: line and field
    let yaml = agent_yaml(GOOD_RECIPIENT, "30 1 * * *", "")
        .replace("    schedule: \"30 1 * * *\"\n", "    schedule: \"30 1 * * *\"\n    retention: { daily: 7, yearly: 3 }\n");
    let t = snapshot_error(&yaml);
    assert!(t.contains("agent.yaml:11:") && t.contains("jobs[0].retention") && t.contains("unknown field `yearly`"), "{t}");
    // a window that is not a duration
    let yaml = agent_yaml(GOOD_RECIPIENT, "30 1 * * *", "")
        .replace("    schedule: \"30 1 * * *\"\n", "    schedule: \"30 1 * * *\"\n    retention: { pitr_window: a week }\n");
    let t = snapshot_error(&yaml);
    assert!(t.contains("jobs[0].retention.pitr_window"), "{t}");
    // the controller's prune schedule is checked when the config is loaded
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let good = std::fs::read_to_string(root.join("configs/controller.yaml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("controller.yaml");
    write(&path, &good.replace("cron: \"0 5 * * *\"", "cron: \"at dawn\""));
    let e = bascule_controller::config::ControllerConfig::load(&path).unwrap_err().to_string();
    assert!(e.contains("prune.cron") && e.contains(&path.display().to_string()), "{e}");
}

#[test]
fn plain_http_beyond_loopback_is_refused_unless_allowed() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let good = std::fs::read_to_string(root.join("configs/controller.yaml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("controller.yaml");
    let plain = good.replace("  tls: { cert: /etc/bascule/api.crt, key: /etc/bascule/api.key }\n", "");
    assert_ne!(plain, good);
    write(&path, &plain);
    let e = bascule_controller::config::ControllerConfig::load(&path).unwrap_err().to_string();
    assert!(e.contains("serve.listen 10.0.0.5:9187 is not a loopback address") && e.contains("serve.tls"), "{e}");
    write(&path, &plain.replace("  # allow_plaintext: true", "  allow_plaintext: true"));
    let c = bascule_controller::config::ControllerConfig::load(&path).unwrap();
    assert!(c.serve.allow_plaintext && c.serve.tls.is_none());
    // loopback needs no TLS
    write(&path, &plain.replace("10.0.0.5:9187", "127.0.0.1:9187"));
    bascule_controller::config::ControllerConfig::load(&path).unwrap();
    // a token for /metrics, and no token to give
    let no_tokens: String =
        good.lines().filter(|l| !l.starts_with("  tokens:") && !l.starts_with("    - { name:")).map(|l| format!("{l}\n")).collect();
    write(&path, &no_tokens);
    let e = bascule_controller::config::ControllerConfig::load(&path).unwrap_err().to_string();
    assert!(e.contains("serve.metrics_token is true but serve.tokens is empty"), "{e}");
}

#[test]
fn errors_are_said_once_and_logs_are_lines_for_people_or_json_for_machines() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere.yaml");
    for prog in ["bascule-agent", "bascule-controller"] {
        let args: &[&str] = if prog == "bascule-agent" { &["snapshot", "--job", "nightly"] } else { &["snapshots", "--tenant", "t"] };
        let o = run(Command::new(bin(prog)).args(args).arg("--config").arg(&missing));
        let err = text(&o);
        assert_eq!(o.status.code(), Some(1), "{err}");
        let os = "No such file or directory";
        assert_eq!(err.matches(os).count(), 1, "{prog}: the cause said once: {err}");
        assert_eq!(err.lines().filter(|l| l.starts_with("error: ")).count(), 1, "{err}");
    }
    // without a terminal: plain lines, no module paths, no escape codes; json on request
    let cfg = dir.path().join("controller.yaml");
    write(
        &cfg,
        &format!(
            "state_dir: {d}/state\nproviders:\n  - {{ name: a, url: \"file://{d}/a\" }}\n  - {{ name: b, url: \"file://{d}/b\" }}\ntenants: []\n",
            d = dir.path().display()
        ),
    );
    let o = run(Command::new(bin("bascule-controller")).args(["verify-key", "--config"]).arg(&cfg));
    let log = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(log.contains(" INFO Created the report signing key path="), "{log}");
    assert!(!log.contains("bascule_controller::") && !log.contains('\x1b'), "{log}");
    std::fs::remove_dir_all(dir.path().join("state")).unwrap();
    let o = run(Command::new(bin("bascule-controller")).args(["verify-key", "--log-format", "json", "--config"]).arg(&cfg));
    let line = String::from_utf8_lossy(&o.stderr).lines().next().unwrap_or_default().to_string();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["message"], "Created the report signing key", "{v}");
    assert_eq!(v["level"], "INFO");
    assert!(v["verify_key"].as_str().unwrap().starts_with("ed25519:"), "{v}");
}

#[test]
fn a_shared_state_beyond_this_machine_needs_verified_tls_and_no_inline_password() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let good = std::fs::read_to_string(root.join("configs/controller.yaml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("controller.yaml");
    let with = |state: &str| {
        write(&path, &format!("{good}\nstate:\n{state}"));
        bascule_controller::config::ControllerConfig::load(&path)
    };
    let e = with("  postgres: \"host=pg.internal dbname=bascule user=bascule\"\n").unwrap_err().to_string();
    assert!(e.contains("sslmode=verify-full"), "{e}");
    let e = with("  postgres: \"host=pg.internal dbname=bascule user=bascule sslmode=require\"\n").unwrap_err().to_string();
    assert!(e.contains("sslmode=verify-full"), "{e}");
    with("  postgres: \"host=pg.internal dbname=bascule user=bascule sslmode=verify-full sslrootcert=/etc/ca.crt\"\n").unwrap();
    with("  postgres: \"host=127.0.0.1 dbname=bascule user=bascule\"\n").unwrap();
    let e = with("  postgres: \"postgresql://bascule:hunter2@127.0.0.1/bascule\"\n").unwrap_err().to_string();
    assert!(e.contains("state.password") && !e.contains("hunter2"), "{e}");
    let e = with("  postgres: \"host=127.0.0.1 dbname=bascule\"\n  lease: 1s\n").unwrap_err().to_string();
    assert!(e.contains("state.lease"), "{e}");
    let e = with("  postgres: \"host=127.0.0.1 dbname=bascule\"\n  replica: \"r1\\nr2\"\n").unwrap_err().to_string();
    assert!(e.contains("state.replica"), "{e}");
    // quotes and SQL in a name are only ever parameters
    with("  postgres: \"host=127.0.0.1 dbname=bascule\"\n  replica: \"r'1; DROP TABLE leases; --é\"\n").unwrap();
    let e = with("  postgres: \"host=127.0.0.1 dbname=bascule\"\n  password: hunter2\n").unwrap_err().to_string();
    assert!(e.contains("{env: NAME}") && !e.contains("hunter2"), "{e}");
}
