//! `drill run`: stages, timeouts, retries, rollback, and the audit chain.
use std::process::Command;

use bascule_tests::{bin, run, text, write};

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
        shell: {{ command: "echo 'the application is down' >&2; exit 1" }}
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
    assert!(line("after").contains("skipped"), "{out}");
    assert!(line("roll-back").contains("passed"), "{out}");

    // the audit chain verifies; a row changed behind SQLite's back is found
    let audit = || run(Command::new(bin("bascule-controller")).args(["drill", "audit", "--verify", "--config"]).arg(&cfg));
    let a = audit();
    assert!(a.status.success(), "{}", text(&a));
    let db = d.path().join("state/drills.sqlite");
    let store = bascule_controller::drill::store::Store::open(&db).unwrap();
    store.connection().execute_batch("DROP TRIGGER audit_no_update; UPDATE audit SET detail = 'check passed' WHERE seq = 3;").unwrap();
    drop(store);
    let a = audit();
    assert!(!a.status.success() && text(&a).contains("audit row 3"), "{}", text(&a));
}
