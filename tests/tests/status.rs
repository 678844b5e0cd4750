//! `bascule-agent status`: is my backup working? Against real PostgreSQL and
//! two Garage servers: never run, all well, a provider down, its backlog, a
//! configuration that does not load.
use bascule_tests::{run, text, Scenario};

#[test]
fn status_says_whether_the_backup_works_and_what_needs_attention() {
    let mut s = Scenario::start(200);
    let status = |s: &Scenario, args: &[&str]| {
        let mut a = vec!["status"];
        a.extend_from_slice(args);
        run(&mut s.agent(&a))
    };
    let o = status(&s, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("job nightly has not run yet: run `bascule-agent snapshot --job nightly`"), "{}", text(&o));

    let snap = s.snapshot();
    assert!(snap.status.success(), "{}", text(&snap));
    let name = Scenario::snapshot_name(&snap);
    let o = status(&s, &[]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    for want in [
        "job nightly: last run",
        ": complete",
        "next run",
        &format!("provider provider-a: newest snapshot {name}"),
        &format!("provider provider-b: newest snapshot {name}"),
        "all is well.",
    ] {
        assert!(out.contains(want), "no {want:?} in\n{out}");
    }
    let o = status(&s, &["--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    assert_eq!(v["jobs"][0]["last_run"]["result"], "complete", "{v:#}");
    assert_eq!(v["providers"].as_array().unwrap().len(), 2, "{v:#}");
    assert!(v["attention"].as_array().unwrap().is_empty(), "{v:#}");

    // provider B down: the run reaches A only, and status says so
    s.b.stop();
    let snap = s.snapshot();
    assert_eq!(snap.status.code(), Some(3), "{}", text(&snap));
    let o = status(&s, &[]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    for want in ["degraded", "provider provider-b: unreachable", "NEEDS ATTENTION", "reached one provider only"] {
        assert!(out.contains(want), "no {want:?} in\n{out}");
    }
    // back: its backlog needs attention until the next run or `sync` copies it
    s.b.restart();
    let o = status(&s, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("provider provider-b lacks 1 snapshot(s) (it was down)"), "{}", text(&o));
    let sync = run(&mut s.agent(&["sync"]));
    assert!(sync.status.success(), "{}", text(&sync));
    let snap = s.snapshot();
    assert!(snap.status.success(), "{}", text(&snap));
    let o = status(&s, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // a configuration that does not load: cannot tell
    let o = run(std::process::Command::new(bascule_tests::bin("bascule-agent")).args(["status", "--config", "/nonexistent/agent.yaml"]));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("CANNOT TELL"), "{}", text(&o));
}
