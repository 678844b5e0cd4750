//! `bascule-controller repair`: objects deleted or damaged on provider A,
//! others on provider B; repair makes both whole from the good copies,
//! without the customer's identity anywhere on the machine, and refuses to
//! spread a copy that fails its check.
use bascule_core::provider::Replica;
use bascule_tests::{flip, run, text, Scenario};

fn keys(rt: &tokio::runtime::Runtime, r: &Replica, prefix: &str, f: impl Fn(&str) -> bool) -> Vec<String> {
    rt.block_on(r.list(prefix)).unwrap().into_keys().filter(|k| f(k)).collect()
}

fn repair(s: &Scenario, dry_run: bool) -> (bool, String) {
    let mut c = s.controller(&["repair"]);
    if dry_run {
        c.arg("--dry-run");
    }
    let o = run(&mut c);
    (o.status.success(), text(&o))
}

fn verify_clean(s: &Scenario) -> (bool, String) {
    let o = run(&mut s.controller(&["verify", "--read-data"]));
    (o.status.success(), text(&o))
}

#[test]
fn repair_copies_good_ciphertext_over_missing_and_damaged_copies_without_any_key() {
    let s = Scenario::start_archiving(3_000);
    let _daemon = s.daemon();
    assert!(s.snapshot().status.success());
    s.pg.psql("mairie", "UPDATE citoyens SET commune = 'Voiron' WHERE id % 10 = 0");
    assert!(s.snapshot().status.success());
    s.switch_wal();
    let last = s.switch_wal();
    s.wait_on_both(&last, std::time::Duration::from_secs(60));
    let (a, b) = (s.provider(&s.a), s.provider(&s.b));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let packs = keys(&rt, &a, "packs/", |_| true);
    let manifests = keys(&rt, &a, "snapshots/", |k| k.ends_with(".manifest"));
    let indexes = keys(&rt, &a, "snapshots/", |k| k.ends_with(".index"));
    let wal_files = keys(&rt, &a, "wal/", |k| !k.ends_with(".rec"));
    let wal_records = keys(&rt, &a, "wal/", |k| k.ends_with(".rec"));
    assert!(
        packs.len() >= 2 && manifests.len() == 2 && indexes.len() == 2 && wal_files.len() >= 2,
        "{packs:?} {manifests:?} {wal_files:?}"
    );

    // the customer's key is nowhere on this machine during the repair
    let key_away = s.path("customer.key.away");
    std::fs::rename(s.path("customer.key"), &key_away).unwrap();

    // A loses a pack, a manifest and a WAL file; B has a pack and a WAL record
    // damaged (same length) and loses its HEAD
    rt.block_on(a.delete(&packs[0])).unwrap();
    rt.block_on(a.delete(&manifests[0])).unwrap();
    rt.block_on(a.delete(&wal_files[0])).unwrap();
    flip(&rt, &b, &packs[1]);
    flip(&rt, &b, &wal_records[1]);
    rt.block_on(b.delete("HEAD")).unwrap();
    let (ok, out) = verify_clean(&s);
    assert!(!ok, "verify sees the damage:\n{out}");

    // a dry run says what it would copy, and writes nothing
    let (ok, out) = repair(&s, true);
    assert!(ok, "{out}");
    for k in [&packs[0], &manifests[0], &wal_files[0], &packs[1], &wal_records[1], &"HEAD".to_string()] {
        assert!(out.lines().any(|l| l.starts_with("WOULD COPY") && l.contains(k.as_str())), "{k} not in:\n{out}");
    }
    assert!(!verify_clean(&s).0, "the dry run changed nothing");

    let (ok, out) = repair(&s, false);
    assert!(ok, "{out}");
    let copied = |k: &str| {
        out.lines().find(|l| l.starts_with("COPIED") && l.contains(k)).unwrap_or_else(|| panic!("{k} not copied:\n{out}")).to_string()
    };
    assert!(copied(&packs[0]).starts_with("COPIED to provider-a") && copied(&packs[0]).ends_with("missing"), "{out}");
    assert!(copied(&packs[1]).starts_with("COPIED to provider-b") && copied(&packs[1]).contains("damaged"), "{out}");
    assert!(copied(&wal_records[1]).contains("damaged"), "{out}");
    assert_eq!(out.lines().filter(|l| l.starts_with("COPIED")).count(), 6, "only what was broken:\n{out}");
    let (ok, out) = verify_clean(&s);
    assert!(ok, "both providers whole after the repair:\n{out}");
    // and again: nothing left to do
    let (ok, out) = repair(&s, false);
    assert!(ok && !out.contains("COPIED"), "{out}");

    // an object damaged on both providers: reported, never spread
    flip(&rt, &a, &indexes[1]);
    flip(&rt, &b, &indexes[1]);
    let before = rt.block_on(a.get(&indexes[1], u64::MAX)).unwrap().unwrap();
    let (ok, out) = repair(&s, false);
    assert!(!ok && out.contains(&format!("UNREPAIRABLE {}", indexes[1])), "{out}");
    assert!(!out.contains("COPIED"), "{out}");
    assert_eq!(rt.block_on(a.get(&indexes[1], u64::MAX)).unwrap().unwrap(), before);
    std::fs::rename(&key_away, s.path("customer.key")).unwrap();
}
