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

#[test]
fn check_proves_the_setup_and_names_each_fix() {
    let mut s = Scenario::start_archiving(100);
    let _daemon = s.daemon();
    let check = |s: &Scenario| run(&mut s.agent(&["check"]));
    let o = check(&s);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    for want in [
        "ok      configuration",
        "ok      provider provider-a: write, read back and delete work; clocks agree",
        "ok      provider provider-b",
        "ok      job nightly source: connects to mairie as bascule",
        "ok      job base source: connects as bascule, who has the REPLICATION attribute",
        "ok      archiving: archive_mode = on",
        "ok      archiving reaches both providers: WAL file",
        "ok      heartbeat",
    ] {
        assert!(out.contains(want), "no {want:?} in\n{out}");
    }

    // an archive_command that is not this agent, and a provider down: each named with its fix
    s.pg.psql("postgres", "ALTER SYSTEM SET archive_command = '/bin/true'");
    s.pg.psql("postgres", "SELECT pg_reload_conf()");
    s.b.stop();
    let o = check(&s);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("FAILED  archiving: archive_mode = on, archive_command = \"/bin/true\": set archive_mode = on and archive_command = 'bascule-agent wal-push --config"), "{out}");
    assert!(out.contains("FAILED  provider provider-b: cannot write") && out.contains("the endpoint is reachable"), "{out}");
    assert!(out.contains("ok      provider provider-a"), "{out}");
    s.b.restart();
    s.pg.psql("postgres", "ALTER SYSTEM RESET archive_command");
    s.pg.psql("postgres", "SELECT pg_reload_conf()");

    // a bucket the agent may only read
    s.b.make_read_only();
    s.write_configs("");
    if bascule_tests::is_root() {
        bascule_tests::ok(std::process::Command::new("chown").args(["-R", "postgres"]).arg(s.dir.path()));
    }
    let o = check(&s);
    assert!(
        text(&o).contains("FAILED  provider provider-b: cannot write") && text(&o).contains("credentials allow writing"),
        "{}",
        text(&o)
    );

    // a key file others may read: refused, saying how to fix it
    std::fs::set_permissions(s.path("agent.key"), std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let o = check(&s);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("FAILED  configuration") && text(&o).contains("chmod 600"), "{}", text(&o));
}

#[test]
fn check_names_a_wrong_password_and_a_missing_database() {
    let s = Scenario::start_local(10);
    s.pg.psql("postgres", "ALTER ROLE bascule PASSWORD 'the-right-one'");
    let hba = s.pg.data_dir().join("pg_hba.conf");
    let text_hba = std::fs::read_to_string(&hba).unwrap().replace("127.0.0.1/32            trust", "127.0.0.1/32            scram-sha-256");
    std::fs::write(&hba, text_hba).unwrap();
    bascule_tests::ok(&mut s.pg.cmd("pg_ctl", &["-D", s.pg.data_dir().to_str().unwrap(), "reload"]));
    std::thread::sleep(std::time::Duration::from_millis(500));
    let yaml = std::fs::read_to_string(s.path("agent.yaml")).unwrap();
    let with_password = yaml.replacen("      pg_dump:", "      password: { env: BASCULE_TEST_PGPASSWORD }\n      pg_dump:", 1);
    assert_ne!(with_password, yaml);
    bascule_tests::write(&s.path("agent.yaml"), &with_password);
    let check = |password: &str| {
        let o = run(s.agent(&["check"]).env("BASCULE_TEST_PGPASSWORD", password));
        (o.status.code(), text(&o))
    };
    let (code, out) = check("a-wrong-one");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("FAILED  job nightly source: password authentication failed") && out.contains("set source.password"), "{out}");
    // the nightly run says the same
    let o = run(s.agent(&["snapshot", "--job", "nightly"]).env("BASCULE_TEST_PGPASSWORD", "a-wrong-one"));
    assert!(!o.status.success() && text(&o).contains("the password is wrong — set source.password"), "{}", text(&o));
    let (code, out) = check("the-right-one");
    assert_eq!(code, Some(0), "{out}");
    bascule_tests::write(&s.path("agent.yaml"), &with_password.replace("dbname=mairie", "dbname=mairie_typo"));
    let (_, out) = check("the-right-one");
    assert!(out.contains("does not exist: no such database — fix dbname in source.dsn"), "{out}");
}
