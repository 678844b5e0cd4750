//! Messages that name the fix: each error a town hall's administrator can
//! meet, met for real (a bucket that is not there, a clock set wrong, a full
//! spool disk, a pg_dump newer than the dump scanner, a role that cannot
//! create databases), says what happened and what to do.
use std::process::{Command, Output};

use bascule_tests::{ok, run, text, Scenario};

fn agent_yaml(s: &Scenario) -> String {
    std::fs::read_to_string(s.path("agent.yaml")).unwrap()
}

fn set_agent_yaml(s: &Scenario, yaml: &str) {
    bascule_tests::write(&s.path("agent.yaml"), yaml);
    if bascule_tests::is_root() {
        ok(Command::new("chown").arg("postgres").arg(s.path("agent.yaml")));
    }
}

fn says(o: &Output, wants: &[&str]) {
    let out = text(o);
    for w in wants {
        assert!(out.contains(w), "no {w:?} in\n{out}");
    }
}

#[test]
fn a_missing_bucket_is_named_with_its_fix() {
    let s = Scenario::start(10);
    let yaml = agent_yaml(&s);
    let b = format!("name: provider-b\n    url: s3://{}/fleet", s.b.bucket);
    let broken = yaml.replace(&b, "name: provider-b\n    url: s3://mairie-sauvegardes/fleet");
    assert_ne!(broken, yaml);
    set_agent_yaml(&s, &broken);
    let o = run(&mut s.agent(&["check"]));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    says(&o, &["FAILED  provider provider-b: cannot write: bucket mairie-sauvegardes does not exist", "create it", "or fix url"]);
    says(&o, &["ok      provider provider-a"]);
    // the nightly run reaches A, says why B was not reached
    let o = s.snapshot();
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    says(&o, &["bucket mairie-sauvegardes does not exist"]);
}

/// The libfaketime preload library (Debian package `faketime`).
fn libfaketime() -> std::path::PathBuf {
    for dir in ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib"] {
        let p = std::path::Path::new(dir).join("faketime/libfaketime.so.1");
        if p.exists() {
            return p;
        }
    }
    panic!("libfaketime is missing: install it with `apt-get install faketime` (./scripts/test.sh does)");
}

#[test]
fn a_clock_off_by_minutes_is_named_with_its_fix() {
    let s = Scenario::start(10);
    // the agent alone runs with the faked clock: `env` goes right before it
    // (inside `setpriv`, whose semaphore would otherwise belong to root)
    let skewed = |offset: &str| {
        let base = s.agent(&["check"]);
        let agent = bascule_tests::bin("bascule-agent");
        let mut args: Vec<std::ffi::OsString> = std::iter::once(base.get_program()).chain(base.get_args()).map(Into::into).collect();
        let at = args.iter().position(|a| *a == *agent.as_os_str()).unwrap();
        let mut faked: Vec<std::ffi::OsString> =
            vec!["env".into(), "FAKETIME_DONT_FAKE_MONOTONIC=1".into(), format!("FAKETIME={offset}").into()];
        faked.push(format!("LD_PRELOAD={}", libfaketime().display()).into());
        args.splice(at..at, faked);
        let mut c = Command::new(&args[0]);
        c.args(&args[1..]);
        for (k, v) in base.get_envs() {
            if let Some(v) = v {
                c.env(k, v);
            }
        }
        run(&mut c)
    };
    let o = skewed("+5m");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    says(&o, &["FAILED  provider provider-a: this machine's clock is 30", "s from the provider's: set up NTP"]);
    // hours behind: said the same way (a provider that refuses the request's
    // time gets the same advice from its error code, RequestTimeTooSkewed)
    let o = skewed("-2h");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    says(&o, &["FAILED  provider provider-a", "clock", "set up NTP"]);
}

#[test]
fn a_full_spool_disk_is_named_with_its_fix() {
    assert!(bascule_tests::is_root(), "this test mounts a small tmpfs for the spool: run it as root (CI does)");
    let s = Scenario::start_local(10);
    let spool = s.path("small-spool");
    std::fs::create_dir_all(&spool).unwrap();
    ok(Command::new("mount").args(["-t", "tmpfs", "-o", "size=1m,mode=0777", "tmpfs"]).arg(&spool));
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(spool.clone());
    set_agent_yaml(&s, &format!("{}wal:\n  spool_dir: {}\n", agent_yaml(&s), spool.display()));
    let segment = s.path("000000010000000000000001");
    std::fs::write(&segment, vec![7u8; 16 << 20]).unwrap();
    let o = run(s.agent(&["wal-push"]).arg(&segment));
    assert!(!o.status.success(), "{}", text(&o));
    says(&o, &["cannot spool 000000010000000000000001", "is full", "PostgreSQL keeps the file in pg_wal and retries", "free space"]);
    assert_eq!(text(&o).matches("is full").count(), 1, "said once: {}", text(&o));
}

#[test]
fn a_pg_dump_newer_than_the_scanner_is_named_and_the_export_still_runs() {
    let s = Scenario::start_local(50);
    // a pg_dump that writes archive version 1.17, as a future PostgreSQL would
    let real = s.pg.tool("pg_dump");
    let wrapper = s.path("pg_dump-next");
    bascule_tests::write(
        &wrapper,
        &format!(
            "#!/bin/sh\ncase \"$1\" in --version) echo 'pg_dump (PostgreSQL) 18.1'; exit 0;; esac\n{} \"$@\" | {{ dd bs=1 count=6 status=none; dd bs=1 count=1 status=none >/dev/null; printf '\\021'; cat; }}\n",
            real.display()
        ),
    );
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let yaml = agent_yaml(&s);
    let with = yaml.replace(&format!("pg_dump: {}", real.display()), &format!("pg_dump: {}", wrapper.display()));
    assert_ne!(with, yaml);
    set_agent_yaml(&s, &with);
    let o = run(&mut s.agent(&["check"]));
    says(&o, &["pg_dump 18.1 is newer than this bascule's dump scanner", "upgrade bascule"]);
    let o = s.snapshot();
    assert!(o.status.success(), "{}", text(&o));
    says(&o, &["archive version 1.17", "counting rows with SQL in the dump's snapshot instead", "upgrade bascule"]);
}

#[test]
fn a_restore_test_role_without_createdb_is_named_with_its_fix() {
    let s = Scenario::start_local(10);
    assert!(s.snapshot().status.success());
    s.pg.psql("postgres", "CREATE ROLE greffe LOGIN NOCREATEDB");
    let yaml = agent_yaml(&s);
    let as_greffe = yaml.replace("user=bascule dbname=mairie", "user=greffe dbname=mairie");
    assert_ne!(as_greffe, yaml);
    set_agent_yaml(&s, &as_greffe);
    let key = s.path("customer.key");
    let o = run(&mut s.agent(&["restore-test", "--job", "nightly", "--identity", key.to_str().unwrap()]));
    assert!(!o.status.success(), "{}", text(&o));
    says(&o, &["role \"greffe\" may not create databases", "ALTER ROLE \"greffe\" CREATEDB;"]);
}

#[test]
fn on_a_terminal_a_restore_shows_a_bar_and_sentences_and_without_one_plain_lines() {
    let s = Scenario::start_local(3000);
    assert!(s.snapshot().status.success());
    let cmd = s.controller(&["restore", "--snapshot", "latest"]);
    let out = s.path("export.dump");
    let mut line: Vec<String> =
        std::iter::once(cmd.get_program()).chain(cmd.get_args()).map(|a| a.to_string_lossy().into_owned()).collect();
    line.extend(["--identity".into(), s.path("customer.key").display().to_string(), "--output".into(), out.display().to_string()]);
    let quoted: Vec<String> = line.iter().map(|a| format!("'{}'", a.replace('\'', "'\\''"))).collect();
    // `script` gives the command a terminal and copies what it shows
    let o = run(Command::new("script").args(["-qec", &quoted.join(" "), "/dev/null"]).env("COLUMNS", "120").env("LINES", "40"));
    assert!(o.status.success(), "{}", text(&o));
    says(&o, &["writing snapshot", "chunks) to", "100%", "[==", "stream hash verified"]);
    // without a terminal: the sentence as a plain log line, no bar, no escape codes
    std::fs::remove_file(&out).unwrap();
    let o = run(&mut s.controller(&[
        "restore",
        "--snapshot",
        "latest",
        "--output",
        out.to_str().unwrap(),
        "--identity",
        s.path("customer.key").to_str().unwrap(),
    ]));
    assert!(o.status.success(), "{}", text(&o));
    says(&o, &[" INFO writing snapshot"]);
    assert!(!text(&o).contains("[==") && !text(&o).contains('\u{1b}'), "{}", text(&o));
}
