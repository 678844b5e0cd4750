//! WAL that tells the truth: a point-in-time restore that ended before the
//! newest WAL the signed HEADs and records name fails (or, with
//! `--accept-gap`, says so), naming the first file missing on both
//! providers; a WAL name is written once, whatever the spool remembers.
use std::time::Duration;

use bascule_core::wal::WalName;
use bascule_tests::{run, text, wait_until, Scenario};

const MINUTE: Duration = Duration::from_secs(60);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// `restore --pitr` to the end of the archive, with `extra` arguments; its output.
fn pitr(s: &Scenario, dir: &str, extra: &[&str]) -> (bool, String) {
    let r = run(s
        .controller(&["restore", "--pitr", "--stop", "--db-user", "bascule", "--port", &bascule_tests::free_port().to_string()])
        .args(extra)
        .arg("--identity")
        .arg(s.path("customer.key"))
        .arg("--pgdata")
        .arg(s.path(dir)));
    (r.status.success(), text(&r))
}

#[test]
fn a_point_in_time_restore_that_ends_early_fails_and_names_the_first_missing_file() {
    let s = Scenario::start_archiving(300);
    let _daemon = s.daemon();
    let b = run(s.agent(&["snapshot", "--job", "base"]).env("RUST_LOG", "info"));
    assert!(b.status.success(), "{}", text(&b));
    let mut names = Vec::new();
    for i in 0..4 {
        s.pg.psql("mairie", &format!("CREATE TABLE t{i} AS SELECT g FROM generate_series(1, 1000) g"));
        names.push(s.switch_wal());
    }
    s.wait_on_both(names.last().unwrap(), MINUTE);
    let (ok, out) = pitr(&s, "whole", &[]);
    assert!(ok && !out.contains("GAP"), "the whole archive restores:\n{out}");

    let rt = rt();
    let (a, b) = (s.provider(&s.a), s.provider(&s.b));
    let gone = |n: &str| {
        let w = WalName::parse(n).unwrap();
        for p in [&a, &b] {
            rt.block_on(p.delete(&w.object_key())).unwrap();
            rt.block_on(p.delete(&w.record_key())).unwrap();
        }
    };
    // the tail end: the newest file HEAD names is gone from both providers
    gone(&names[3]);
    let (ok, out) = pitr(&s, "tail", &[]);
    assert!(!ok, "a restore that stopped before the end succeeded:\n{out}");
    assert!(out.contains(&format!("the first file missing on both providers: {}", names[3])), "{out}");
    assert!(out.contains("--accept-gap"), "it says how to go on anyway:\n{out}");
    let (ok, out) = pitr(&s, "tail-accepted", &["--accept-gap"]);
    assert!(ok, "{out}");
    assert!(out.contains("GAP (accepted)") && out.contains(&names[3]), "an accepted gap is said:\n{out}");

    // in the middle: recovery stops at the first hole
    gone(&names[1]);
    let (ok, out) = pitr(&s, "middle", &[]);
    assert!(!ok, "{out}");
    assert!(out.contains(&format!("the first file missing on both providers: {}", names[1])), "{out}");
}

#[test]
fn a_wal_name_is_written_once_whatever_the_spool_remembers() {
    let s = Scenario::start_archiving(100);
    let daemon = s.daemon();
    let name = s.switch_wal();
    let last = s.switch_wal();
    s.wait_on_both(&last, MINUTE);
    drop(daemon);
    let rt = rt();
    let w = WalName::parse(&name).unwrap();
    let (a, b) = (s.provider(&s.a), s.provider(&s.b));
    let stored = |r: &bascule_core::provider::Replica| {
        (rt.block_on(r.get(&w.object_key(), u64::MAX)).unwrap().unwrap(), rt.block_on(r.get(&w.record_key(), u64::MAX)).unwrap().unwrap())
    };
    let before = (stored(&a), stored(&b));

    // the spool forgot everything (its markers expired, or it was wiped)
    for sub in [".sealed", ".sent", ".durable"] {
        std::fs::remove_dir_all(s.spool().join(sub)).unwrap();
    }
    // …and the same name comes again with other content
    let other = s.path(&name);
    let mut bytes = vec![0u8; 16 << 20];
    getrandom::getrandom(&mut bytes).unwrap();
    std::fs::write(&other, &bytes).unwrap();
    if bascule_tests::is_root() {
        bascule_tests::ok(std::process::Command::new("chown").args(["-R", "postgres"]).arg(s.dir.path()));
    }
    let push = run(s.agent(&["wal-push"]).arg(&other));
    assert!(push.status.success(), "the spool takes it (it no longer knows the name):\n{}", text(&push));
    let _daemon = s.daemon();
    wait_until("the daemon to refuse the upload", MINUTE, || s.daemon_log().contains("already archives another file under this name"));
    std::thread::sleep(Duration::from_secs(2));
    assert!(before == (stored(&a), stored(&b)), "the archived file and its record were overwritten");
    assert!(s.spool().join(&name).exists() || s.spool().join(".sealed").join(&name).exists(), "the refused file stays in the spool");
}
