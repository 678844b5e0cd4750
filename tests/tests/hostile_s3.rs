//! Hostile providers on real S3 servers (two Garage instances): a condemned
//! list forged while an export is in flight, and a few bad objects served
//! through S3 (`tests/tests/hostile.rs` runs the whole matrix on local
//! directories).
use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use bascule_core::keys::AgentKey;
use bascule_core::object::ObjectRef;
use bascule_core::provider::Replica;
use bascule_core::signed::{self, Kind};
use bascule_tests::{bin, edit, ok, run, text, wait_until, Scenario};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn packs(rt: &tokio::runtime::Runtime, r: &Replica) -> BTreeSet<String> {
    rt.block_on(r.list("packs/")).unwrap().into_keys().collect()
}

fn put(rt: &tokio::runtime::Runtime, r: &Replica, key: &str, bytes: Vec<u8>) {
    rt.block_on(r.put(key, bytes.into())).unwrap();
}

fn get(rt: &tokio::runtime::Runtime, r: &Replica, key: &str) -> Vec<u8> {
    rt.block_on(r.get(key, u64::MAX)).unwrap().unwrap_or_else(|| panic!("{key} is missing")).to_vec()
}

#[test]
fn a_condemned_list_forged_during_an_export_deletes_nothing() {
    let s = Scenario::start(100);
    let rt = rt();
    let (a, b) = (s.provider(&s.a), s.provider(&s.b));
    // a `command` source: 24 MiB of data, then a pause the test works in
    let script = s.path("source.sh");
    let data = s.path("data.bin");
    let mut bytes = vec![0u8; 24 << 20];
    getrandom::getrandom(&mut bytes).unwrap();
    std::fs::write(&data, &bytes).unwrap();
    std::fs::write(&script, format!("cat {}\nsleep 8\n", data.display())).unwrap();
    edit(
        &s.path("agent.yaml"),
        "jobs:\n",
        &format!(
            "jobs:\n  - name: files\n    schedule: \"0 2 * * *\"\n    source:\n      type: command\n      command: [sh, \"{}\"]\n",
            script.display()
        ),
    );
    // the agent honours only the lists the controller signed
    let controller_key = ok(Command::new(bin("bascule-controller")).args(["verify-key", "--config"]).arg(s.path("controller.yaml")));
    let mut agent_yaml = std::fs::read_to_string(s.path("agent.yaml")).unwrap();
    agent_yaml.push_str(&format!("controller_keys: [\"{}\"]\n", controller_key.trim()));
    std::fs::write(s.path("agent.yaml"), agent_yaml).unwrap();
    // a real prune condemns unreferenced packs for an hour
    let mut ctl = std::fs::read_to_string(s.path("controller.yaml")).unwrap();
    ctl.push_str("prune:\n  grace: 1h\n");
    std::fs::write(s.path("controller.yaml"), ctl).unwrap();
    if bascule_tests::is_root() {
        ok(Command::new("chown").args(["-R", "postgres"]).arg(s.dir.path()));
    }

    let before = packs(&rt, &a);
    let mut export = s.agent(&["snapshot", "--job", "files"]);
    let export = export.env("RUST_LOG", "info").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // the export's packs are on the providers, its manifest not yet
    let mut in_flight = BTreeSet::new();
    wait_until("the export's packs on provider A", Duration::from_secs(60), || {
        in_flight = packs(&rt, &a).difference(&before).cloned().collect();
        in_flight.len() >= 2
    });
    let refs: Vec<ObjectRef> = in_flight.iter().map(|k| ObjectRef::of(k.clone(), &get(&rt, &a, k))).collect();
    let refs = serde_json::to_value(&refs).unwrap();
    // forged by a provider: unsigned (format 1), and signed by a stranger,
    // both condemned long ago with no grace, naming the packs in flight
    let unsigned = "20200101T000000Z-0000aaaa";
    let stranger = "20200101T000000Z-0000bbbb";
    let old = serde_json::json!({ "format": 1, "condemned_at": "2020-01-01T00:00:00Z", "grace_seconds": 0, "packs": refs });
    let forged = serde_json::json!({
        "format": 2, "tenant": s.tenant, "name": stranger, "condemned_at": "2020-01-01T00:00:00Z", "grace_seconds": 0, "packs": refs
    });
    let forged = signed::sign(Kind::Condemned, &forged, &AgentKey::generate());
    for r in [&a, &b] {
        put(&rt, r, &format!("prune/{unsigned}.condemned"), serde_json::to_vec(&old).unwrap());
        put(&rt, r, &format!("prune/{stranger}.condemned"), forged.clone());
    }
    let p = run(&mut s.controller(&["prune"]));
    let out = text(&p);
    assert!(p.status.success(), "{out}");
    for name in [unsigned, stranger] {
        assert!(out.contains(&format!("IGNORED condemned list prune/{name}.condemned on provider-a")), "{name} ignored:\n{out}");
    }
    for (r, which) in [(&a, "A"), (&b, "B")] {
        let now = packs(&rt, r);
        assert!(in_flight.iter().all(|k| now.contains(k)), "the forged lists deleted packs on provider {which}:\n{out}");
    }

    let export = export.wait_with_output().unwrap();
    let eout = text(&export);
    assert!(export.status.success(), "the export commits past the forged lists:\n{eout}");
    assert!(eout.contains("Ignoring a condemned list"), "the agent says it ignored them:\n{eout}");
    let p = run(&mut s.controller(&["prune"]));
    assert!(p.status.success(), "{}", text(&p));
    let v = run(&mut s.controller(&["verify", "--read-data"]));
    assert!(v.status.success(), "every pack of the export is whole on both providers:\n{}", text(&v));
    let restored = s.path("restored.bin");
    let r = run(s
        .controller(&["restore", "--snapshot", "latest"])
        .arg("--output")
        .arg(&restored)
        .arg("--identity")
        .arg(s.path("customer.key")));
    assert!(r.status.success(), "{}", text(&r));
    assert!(std::fs::read(&restored).unwrap() == bytes, "the restored file is the source's data");
}

#[test]
fn bad_objects_served_through_s3_are_worked_around() {
    let s = Scenario::start(300);
    let rt = rt();
    let (a, b) = (s.provider(&s.a), s.provider(&s.b));
    for _ in 0..2 {
        let o = s.snapshot();
        assert!(o.status.success(), "{}", text(&o));
    }
    let good_head = get(&rt, &a, "HEAD");
    let manifests: Vec<String> = rt.block_on(a.list("snapshots/")).unwrap().into_keys().filter(|k| k.ends_with(".manifest")).collect();
    let latest = manifests.last().unwrap().clone();
    let pack = packs(&rt, &a).into_iter().next().unwrap();
    let mut n = 0;
    let mut restores = |what: &str| {
        n += 1;
        let db = format!("restored_{n}");
        let r = s.restore("latest", &db, &s.path("customer.key"));
        assert!(r.status.success(), "{what}: restore from B:\n{}", text(&r));
        assert_eq!(s.pg.data_fingerprint("mairie"), s.pg.data_fingerprint(&db), "{what}: restored data differs");
    };
    let verify_names = |what: &str, key: &str| {
        let v = run(&mut s.controller(&["verify", "--read-data"]));
        let out = text(&v);
        assert!(!v.status.success() && out.contains("provider-a") && out.contains(key), "{what}: verify names {key}:\n{out}");
    };

    // HEAD: 1 MiB of junk
    put(&rt, &a, "HEAD", vec![b'x'; 1 << 20]);
    verify_names("an oversized HEAD", "HEAD");
    restores("an oversized HEAD");
    let sync = run(&mut s.agent(&["sync"]));
    assert!(sync.status.success(), "{}", text(&sync));
    assert_eq!(get(&rt, &a, "HEAD"), get(&rt, &b, "HEAD"), "sync put the good HEAD back on A");
    put(&rt, &a, "HEAD", good_head);

    // the newest manifest, one bit flipped
    bascule_tests::flip(&rt, &a, &latest);
    verify_names("a flipped manifest", &latest);
    restores("a flipped manifest");
    let repair = run(&mut s.controller(&["repair"]));
    assert!(repair.status.success(), "{}", text(&repair));

    // a pack cut in half
    let whole = get(&rt, &a, &pack);
    put(&rt, &a, &pack, whole[..whole.len() / 2].to_vec());
    verify_names("a truncated pack", &pack);
    restores("a truncated pack");
    let repair = run(&mut s.controller(&["repair"]));
    assert!(repair.status.success(), "{}", text(&repair));
    let v = run(&mut s.controller(&["verify", "--read-data"]));
    assert!(v.status.success(), "repair made A whole:\n{}", text(&v));

    // a junk manifest that sorts after every real one
    put(&rt, &a, "snapshots/99991231T235959Z-ffffffff.manifest", b"planted by the provider".to_vec());
    let p = run(&mut s.controller(&["prune"]));
    assert!(p.status.success(), "prune goes on past a junk manifest:\n{}", text(&p));
    let sync = run(&mut s.agent(&["sync"]));
    assert!(sync.status.success(), "{}", text(&sync));
    assert!(
        rt.block_on(b.get("snapshots/99991231T235959Z-ffffffff.manifest", u64::MAX)).unwrap().is_none(),
        "sync did not copy the junk to B"
    );
    restores("a junk manifest");
    // a real manifest copied under another name: no more trusted than junk
    let copy = "snapshots/20990101T000000Z-deadbeef.manifest";
    put(&rt, &a, copy, get(&rt, &a, &manifests[0]));
    let p = run(&mut s.controller(&["prune", "--dry-run"]));
    let out = text(&p);
    assert!(p.status.success(), "{out}");
    let line = out.lines().find(|l| l.starts_with(&format!("UNVERIFIED {copy}"))).unwrap_or_else(|| panic!("{copy} reported:\n{out}"));
    assert!(line.contains("kept until"), "a copy under another name is quarantined, not kept for ever:\n{out}");
    let o = s.snapshot();
    assert!(o.status.success(), "an export past a junk manifest:\n{}", text(&o));
}
