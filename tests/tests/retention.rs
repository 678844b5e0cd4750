//! Retention and prune: 40 simulated nights pruned to 7 daily / 4 weekly
//! (exactly those stay, each restores, storage shrinks), and prunes racing
//! exports that reuse the packs they condemn (every manifest stays whole).
use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use bascule_tests::{edit, run, text, wait_until, Scenario};

fn append(path: &std::path::Path, yaml: &str) {
    std::fs::OpenOptions::new().append(true).open(path).unwrap().write_all(yaml.as_bytes()).unwrap();
}

/// Names of the manifests a provider holds, and the bytes it stores in all.
fn stored(s: &Scenario, which: &bascule_tests::Garage) -> (BTreeSet<String>, u64) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let all = rt.block_on(s.provider(which).list("")).unwrap();
    let names = all.keys().filter_map(|k| bascule_core::layout::manifest_name(k).map(str::to_string)).collect();
    (names, all.values().sum())
}

fn prune(s: &Scenario, dry_run: bool) -> Output {
    let mut c = s.controller(&["prune"]);
    if dry_run {
        c.arg("--dry-run");
    }
    run(&mut c)
}

#[test]
fn forty_nights_keep_seven_daily_and_four_weekly_and_every_kept_snapshot_restores() {
    let s = Scenario::start(2_000);
    append(&s.path("controller.yaml"), "retention:\n  daily: 7\n  weekly: 4\nprune:\n  grace: 0s\n");
    // Thursday 1 January 2026 to Monday 9 February 2026, one export a night
    let first = chrono::DateTime::parse_from_rfc3339("2026-01-01T01:30:00Z").unwrap().to_utc();
    let mut nights = Vec::new();
    for d in 0..40i64 {
        // a day at the town hall: about 1 % new people, some acts change status
        s.pg.psql(
            "mairie",
            &format!(
                "INSERT INTO citoyens (nom, commune, naissance) SELECT 'Arrivée-{d}-' || g, 'Voiron', date '2026-01-01' + {d} FROM generate_series(1, 20) g;
                 UPDATE actes SET statut = 'archivé', note = 'révisé le jour {d}' WHERE id % 97 = {d};"
            ),
        );
        let at = (first + chrono::Duration::days(d)).to_rfc3339();
        let o = run(s.agent(&["snapshot", "--job", "nightly", "--time", &at]).env("RUST_LOG", "info"));
        assert!(o.status.success(), "night {d}:\n{}", text(&o));
        let name = Scenario::snapshot_name(&o);
        assert!(name.starts_with(&(first + chrono::Duration::days(d)).format("%Y%m%dT").to_string()), "{name} is not dated night {d}");
        nights.push(name);
    }
    let (before, bytes_before) = stored(&s, &s.a);
    assert_eq!(before.len(), 40);

    // the 7 newest days (3 to 9 February) and the newest of each of the 4
    // newest ISO weeks: Monday 9 February, Sunday 8 February, Sunday 1 February, Sunday 25 January
    let expected: BTreeSet<String> = [24usize, 31, 33, 34, 35, 36, 37, 38, 39].iter().map(|d| nights[*d].clone()).collect();

    let dry = prune(&s, true);
    let out = text(&dry);
    assert!(dry.status.success(), "{out}");
    assert!(out.contains("dry run, nothing deleted") && out.contains("snapshots: 9 kept, 31 would delete"), "{out}");
    assert!(out.contains("job nightly: keeping 7 daily, 4 weekly, 0 monthly"), "{out}");
    for n in &expected {
        assert!(out.lines().any(|l| l.contains(n.as_str()) && l.contains("keep (")), "{n} kept in:\n{out}");
    }
    let freed: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("freed: "))
        .and_then(|l| l.split(" (").nth(1))
        .and_then(|l| l.split(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(freed > 0, "{out}");
    assert_eq!(stored(&s, &s.a), (before.clone(), bytes_before), "a dry run deletes nothing");

    let real = prune(&s, false);
    let out = text(&real);
    assert!(real.status.success(), "{out}");
    assert!(out.contains("snapshots: 9 kept, 31 deleted"), "{out}");
    let (after_a, bytes_after) = stored(&s, &s.a);
    let (after_b, bytes_after_b) = stored(&s, &s.b);
    assert_eq!(after_a, expected, "exactly the expected manifests remain on A");
    assert_eq!(after_b, expected, "… and on B");
    assert_eq!(bytes_after, bytes_after_b);
    assert!(bytes_after < bytes_before, "storage shrinks: {bytes_before} → {bytes_after}");
    println!("40 nights: {bytes_before} B on provider A before the prune, {bytes_after} B after; dry run announced {freed} B freed (both providers)");
    assert_eq!(bytes_before - bytes_after, freed / 2, "the dry run announced what the prune freed (on each of the two providers)");

    let v = run(&mut s.controller(&["verify", "--read-data"]));
    assert!(v.status.success(), "every kept snapshot is whole on both providers:\n{}", text(&v));
    for (i, name) in expected.iter().enumerate() {
        let r = s.restore(name, &format!("kept_{i}"), &s.path("customer.key"));
        assert!(r.status.success(), "{name} restores:\n{}", text(&r));
    }
    assert_eq!(s.pg.data_fingerprint("mairie"), s.pg.data_fingerprint(&format!("kept_{}", expected.len() - 1)), "the newest is the source");

    let again = prune(&s, false);
    assert!(again.status.success() && text(&again).contains("freed: 0.0 MiB (0 bytes"), "a second prune finds nothing:\n{}", text(&again));
}

/// Writes `n` bytes of fresh random data to `path`.
fn random_file(path: &std::path::Path, n: usize) {
    let mut data = vec![0u8; n];
    getrandom::getrandom(&mut data).unwrap();
    std::fs::write(path, data).unwrap();
}

/// The agent's pack journal of job `files` (packs sent by a run not committed yet).
fn journal_lines(s: &Scenario) -> usize {
    let dir = s.path("agent-state");
    std::fs::read_dir(&dir)
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name().to_string_lossy().starts_with("files.") && e.file_name().to_string_lossy().ends_with(".packs.journal")
                })
                .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default().lines().count())
                .sum()
        })
        .unwrap_or(0)
}

fn spawn_files_export(s: &Scenario) -> std::process::Child {
    let mut c = s.agent(&["snapshot", "--job", "files"]);
    c.env("RUST_LOG", "info").stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    c.spawn().unwrap()
}

#[test]
fn prunes_racing_exports_never_leave_a_manifest_pointing_at_nothing() {
    let s = Scenario::start(100);
    // a `command` source whose data and pace the test sets: the data, then a pause
    let script = s.path("source.sh");
    edit(
        &s.path("agent.yaml"),
        "jobs:\n",
        &format!(
            "jobs:\n  - name: files\n    schedule: \"0 2 * * *\"\n    retention: {{ daily: 1 }}\n    source:\n      type: command\n      command: [sh, \"{}\"]\n",
            script.display()
        ),
    );
    append(&s.path("controller.yaml"), "prune:\n  grace: 3s\n");
    let set_source = |data: &str, pause: &str| {
        std::fs::write(&script, format!("cat {}\nsleep {pause}\n", s.path(data).display())).unwrap();
    };
    if bascule_tests::is_root() {
        bascule_tests::ok(Command::new("chown").args(["-R", "postgres"]).arg(s.dir.path()));
    }

    random_file(&s.path("first.bin"), 4 << 20);
    set_source("first.bin", "0");
    let o = run(&mut s.agent(&["snapshot", "--job", "files"]));
    assert!(o.status.success(), "{}", text(&o));

    let mut referenced_again = 0;
    let mut refused = 0;
    // (prune delay after the export starts, the source's pause before its end)
    let timings = [(0, "0.6"), (250, "0.6"), (500, "0.6"), (900, "0.6"), (600, "2.5")];
    for (round, (delay_ms, pause)) in timings.iter().enumerate() {
        // a killed export leaves packs no manifest references, in the agent's journal
        let data = format!("data-{round}.bin");
        random_file(&s.path(&data), 24 << 20);
        set_source(&data, "30");
        let mut killed = spawn_files_export(&s);
        wait_until("two packs of the killed export in the journal", Duration::from_secs(60), || journal_lines(&s) >= 2);
        killed.kill().unwrap(); // SIGKILL: the source's `sleep` is left to end by itself
        let _ = killed.wait();
        // …and they grow older than the grace period
        std::thread::sleep(Duration::from_millis(3200));

        // the next export reuses them while prunes condemn them
        set_source(&data, pause);
        let t0 = Instant::now();
        let mut export = spawn_files_export(&s);
        std::thread::sleep(Duration::from_millis(*delay_ms));
        let mut prunes = Vec::new();
        while export.try_wait().unwrap().is_none() {
            prunes.push(prune(&s, false));
            std::thread::sleep(Duration::from_millis(200));
            assert!(t0.elapsed() < Duration::from_secs(60), "round {round}: the export does not end");
        }
        let export = export.wait_with_output().unwrap();
        let out = text(&export);
        if export.status.success() {
            if out.contains("condemned during this export are referenced again") {
                referenced_again += 1;
            }
        } else {
            assert!(
                out.contains("were condemned by a prune") && out.contains("nothing committed"),
                "round {round}: an export fails only for its deadline:\n{out}"
            );
            refused += 1;
        }
        for p in &prunes {
            assert!(p.status.success(), "round {round}: prune:\n{}", text(p));
        }
        // later prunes delete what their grace period allows
        std::thread::sleep(Duration::from_millis(3100));
        for _ in 0..2 {
            let p = prune(&s, false);
            assert!(p.status.success(), "{}", text(&p));
        }
        let v = run(&mut s.controller(&["verify"]));
        assert!(
            v.status.success(),
            "round {round} (prune {delay_ms} ms into the export): every manifest's objects on both providers:\n{}\nexport:\n{out}",
            text(&v)
        );
        // a refused export is followed by one that seals the condemned chunks anew
        if !export.status.success() {
            set_source(&data, "0");
            let o = run(s.agent(&["snapshot", "--job", "files"]).env("RUST_LOG", "info"));
            assert!(o.status.success(), "the run after a refused commit succeeds:\n{}", text(&o));
            let v = run(&mut s.controller(&["verify", "--read-data"]));
            assert!(v.status.success(), "{}", text(&v));
        }
    }
    println!(
        "{} rounds: {referenced_again} exports kept packs condemned while they ran, {refused} refused to commit past the deadline",
        timings.len()
    );
    assert!(referenced_again >= 1, "at least one export referenced packs condemned while it ran");
    assert!(refused >= 1, "the slow export passed its commit deadline and refused to commit");
}

#[test]
fn the_pitr_window_keeps_the_wal_from_its_base_backup_and_prunes_the_older() {
    const MINUTE: Duration = Duration::from_secs(60);
    let s = Scenario::start_archiving(1_000);
    let _daemon = s.daemon();
    let now = chrono::Utc::now();
    let base = |days_ago: i64| {
        let mut c = s.agent(&["snapshot", "--job", "base"]);
        if days_ago > 0 {
            c.args(["--time", &(now - chrono::Duration::days(days_ago)).to_rfc3339()]);
        }
        let o = run(c.env("RUST_LOG", "info"));
        assert!(o.status.success(), "base backup failed:\n{}", text(&o));
        Scenario::snapshot_name(&o)
    };
    let writes = |tag: &str| {
        for _ in 0..3 {
            s.pg.psql("mairie", &format!("INSERT INTO citoyens (nom) SELECT '{tag}-' || g FROM generate_series(1, 500) g"));
            s.switch_wal();
        }
    };
    // three base backups recorded 20 days ago, 10 days ago and now, WAL between them
    let base0 = base(20);
    writes("après-base0");
    let base1 = base(10);
    s.pg.psql("mairie", "CREATE TABLE markers (n int PRIMARY KEY, at timestamptz NOT NULL)");
    writes("après-base1");
    let marker = s.pg.psql(
        "mairie",
        "INSERT INTO markers VALUES (1, clock_timestamp()) RETURNING to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    );
    std::thread::sleep(Duration::from_millis(1100));
    s.pg.psql("mairie", "INSERT INTO markers VALUES (2, clock_timestamp())");
    writes("avant-base2");
    let base2 = base(0);
    let last = s.switch_wal();
    s.wait_on_both(&last, MINUTE);
    let before = s.wal_on(&s.a);

    // keep one base backup a day, and 5 days of point-in-time recovery
    append(&s.path("controller.yaml"), "retention:\n  daily: 1\n  pitr_window: 5d\nprune:\n  grace: 0s\n");
    let p = prune(&s, false);
    let out = text(&p);
    assert!(p.status.success(), "{out}");
    let line = |name: &str| out.lines().find(|l| l.contains(name)).unwrap_or_else(|| panic!("{name} not in:\n{out}")).to_string();
    assert!(line(&base0).ends_with("delete"), "{out}");
    assert!(line(&base1).contains("keep (pitr-base)"), "the base the window starts from stays:\n{out}");
    assert!(line(&base2).contains("keep (newest, daily)"), "{out}");
    assert!(out.contains(&format!("(base backup {base1}) onwards")), "{out}");

    // the WAL before base1 is gone from both providers; from base1 on, all of it stays
    let after_a = s.wal_on(&s.a);
    assert_eq!(after_a, s.wal_on(&s.b), "both providers pruned alike");
    let manifest = |name: &str| -> bascule_core::manifest::Manifest {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let bytes = rt.block_on(s.provider(&s.a).get(&bascule_core::layout::manifest(name), u64::MAX)).unwrap().unwrap();
        let key: bascule_core::keys::VerifyKey = s.verify_key.parse().unwrap();
        bascule_core::signed::open(bascule_core::signed::Kind::Manifest, &bytes, &[key], "m").unwrap().0
    };
    let start = manifest(&base1).wal.unwrap().start;
    let first_kept = format!("{:08X}{:08X}{:08X}", 1, start.0 >> 32, (start.0 & 0xffff_ffff) >> 24);
    let deleted: Vec<&String> = before.iter().filter(|n| !after_a.contains(*n)).collect();
    assert!(!deleted.is_empty(), "some WAL was older than the window's base backup");
    assert!(
        deleted.iter().filter(|n| n.len() == 24).all(|n| n.as_str() < first_kept.as_str()),
        "only WAL before {first_kept} goes: {deleted:?}"
    );
    assert!(
        before.iter().filter(|n| n.len() == 24 && n.as_str() >= first_kept.as_str()).all(|n| after_a.contains(n)),
        "the WAL from base1 on stays"
    );
    let v = run(&mut s.controller(&["verify"]));
    assert!(v.status.success(), "{}", text(&v));

    // a point between base1 and base2 still restores, from base1 and its WAL
    let target = (chrono::DateTime::parse_from_rfc3339(&marker).unwrap() + chrono::Duration::milliseconds(500)).to_rfc3339();
    let (out, restored) = s.pitr("in-window", &["--at", &target]);
    assert!(out.contains(&base1), "restored from the window's base backup:\n{out}");
    assert_eq!(restored("SELECT string_agg(n::text, ',' ORDER BY n) FROM markers"), "1", "{out}");
}
