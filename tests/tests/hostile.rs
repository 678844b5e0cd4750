//! The hostile-provider suite: provider A serves, for one object of each
//! kind, every kind of bad copy (absent, empty, truncated, one bit flipped,
//! garbage of the right length, a 1 GiB sparse file, validly signed for
//! another tenant, signed by a revoked key, an older version), and stray
//! objects with odd names under every prefix; provider B keeps good copies.
//! Every command that reads the kind runs against it and must: not panic,
//! stay within 256 MiB of its normal peak memory, give the right result from
//! B, and name provider and key where it reports.
//!
//! The providers are two local directories (a provider's objects are files
//! the test rewrites); `tests/tests/hostile_s3.rs` runs a subset against two
//! Garage servers. Between cases, both providers and both state folders are
//! put back as they were.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use bascule_core::keys::AgentKey;
use bascule_core::signed::{self, Kind};
use bascule_tests::http::{get, metric};
use bascule_tests::{bin, free_port, is_root, ok, run, text, wait_until, KillOnDrop, Scenario};

/// What provider A serves instead of its good copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    Absent,
    Empty,
    Truncated,
    Flipped,
    Garbage,
    /// A 1 GiB sparse file.
    Oversized,
    /// Validly signed by the tenant's agent, for another tenant.
    OtherTenant,
    /// Signed by a key the controller holds as revoked.
    RevokedKey,
    /// An older version, validly signed (HEAD only).
    Replayed,
}

const BYTES: &[Case] = &[Case::Absent, Case::Empty, Case::Truncated, Case::Flipped, Case::Garbage, Case::Oversized];
const SIGNED: &[Case] =
    &[Case::Absent, Case::Empty, Case::Truncated, Case::Flipped, Case::Garbage, Case::Oversized, Case::OtherTenant, Case::RevokedKey];

/// The commands of the suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Cmd {
    Verify,
    Restore,
    Pitr,
    Wal,
    Repair,
    Prune,
    RestoreTests,
    Sync,
    Export,
}

const ALL_CMDS: &[Cmd] =
    &[Cmd::Verify, Cmd::Restore, Cmd::Pitr, Cmd::Wal, Cmd::Repair, Cmd::Prune, Cmd::RestoreTests, Cmd::Sync, Cmd::Export];

/// A whole installation, exported, archived, restore-tested, with a
/// condemned list and a drill report, and a copy of how it all was.
struct World {
    s: Scenario,
    /// Provider A's and B's folder of the tenant, and the reports'.
    a: PathBuf,
    b: PathBuf,
    pristine: PathBuf,
    agent_key: AgentKey,
    controller_key: AgentKey,
    revoked: AgentKey,
    /// HEAD after the first export (an older, validly signed state).
    old_head: Vec<u8>,
    /// Normal peak memory of each command (KiB).
    baseline: BTreeMap<Cmd, u64>,
    /// Every (kind, case, command) tried, with the result.
    matrix: Vec<(String, Case, Cmd, bool)>,
    restores: u32,
}

/// Runs a command under `/usr/bin/time`: its output and its peak memory in KiB.
fn measured(c: Command) -> (Output, u64) {
    let time = Path::new("/usr/bin/time");
    assert!(time.exists(), "/usr/bin/time is missing: install the Debian package `time` (the README's test command does)");
    let prog = c.get_program().to_owned();
    let args: Vec<_> = c.get_args().map(|a| a.to_owned()).collect();
    let mut t = Command::new(time);
    t.args(["-f", "bascule-maxrss %M"]).arg(prog).args(args);
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => t.env(k, v),
            None => t.env_remove(k),
        };
    }
    let o = run(&mut t);
    let rss = text(&o).lines().rev().find_map(|l| l.strip_prefix("bascule-maxrss ")).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    (o, rss)
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    ok(Command::new("cp").arg("-a").arg(from).arg(to));
}

impl World {
    fn new() -> World {
        let s = Scenario::start_archiving_local(300);
        let agent_key = AgentKey::load(&s.path("agent.key")).unwrap();
        // a key the controller knows as revoked long ago
        let revoked = AgentKey::generate();
        let ctl = std::fs::read_to_string(s.path("controller.yaml")).unwrap().replace(
            &format!("verify_keys: [\"{}\"]", s.verify_key),
            &format!("verify_keys: [\"{}\", {{ key: \"{}\", revoked_at: 2001-01-01T00:00:00Z }}]", s.verify_key, revoked.verify_key()),
        );
        std::fs::write(s.path("controller.yaml"), ctl).unwrap();
        let first = s.snapshot();
        assert!(first.status.success(), "{}", text(&first));
        let a = s.a.local_root("fleet").join(&s.tenant);
        let b = s.b.local_root("fleet").join(&s.tenant);
        let old_head = std::fs::read(a.join("HEAD")).unwrap();
        // WAL, a base backup, more WAL, a restore test
        {
            let _daemon = s.daemon();
            let base = run(s.agent(&["snapshot", "--job", "base"]).env("RUST_LOG", "info"));
            assert!(base.status.success(), "{}", text(&base));
            s.pg.psql("mairie", "CREATE TABLE after_base AS SELECT g FROM generate_series(1, 100) g");
            let last = s.switch_wal();
            s.wait_on_both(&last, Duration::from_secs(120));
            wait_until("the spool to empty", Duration::from_secs(60), || s.spool_files() == 0);
        }
        let rt = run(s.agent(&["restore-test", "--job", "nightly"]).arg("--identity").arg(s.path("customer.key")));
        assert!(rt.status.success(), "{}", text(&rt));
        // the newest export holds the data as it now is (a restore is compared with it)
        let last = s.snapshot();
        assert!(last.status.success(), "{}", text(&last));
        let controller_key = {
            let k = ok(Command::new(bin("bascule-controller")).args(["verify-key", "--config"]).arg(s.path("controller.yaml")));
            assert!(k.starts_with("ed25519:"), "{k}");
            AgentKey::load(&s.path("controller-state/report-signing.key")).unwrap()
        };
        let mut w = World {
            pristine: s.path("pristine"),
            s,
            a,
            b,
            agent_key,
            controller_key,
            revoked,
            old_head,
            baseline: BTreeMap::new(),
            matrix: Vec::new(),
            restores: 0,
        };
        w.plant_list_and_report();
        // the controller has seen the current HEADs: an older one is a rollback
        let v = run(&mut w.s.controller(&["verify"]));
        assert!(v.status.success(), "{}", text(&v));
        if is_root() {
            ok(Command::new("chown").args(["-R", "postgres"]).arg(w.s.a.local_root("fleet")).arg(w.s.b.local_root("fleet")));
        }
        std::fs::create_dir_all(&w.pristine).unwrap();
        w.save();
        for &c in ALL_CMDS {
            let (o, rss) = w.command(c);
            assert!(o.status.success(), "{c:?} on an untouched installation:\n{}", text(&o));
            w.baseline.insert(c, rss);
            w.reset();
        }
        w
    }

    /// A condemned list the controller signed (naming a pack nothing needs)
    /// and a signed drill report, on both providers.
    fn plant_list_and_report(&self) {
        let name = "20260101T000000Z-c0ffee00";
        let list = serde_json::json!({
            "format": 2, "tenant": self.s.tenant, "name": name, "condemned_at": "2026-01-01T00:00:00Z", "grace_seconds": 31536000u64,
            "packs": [{ "key": "packs/ff/ff00", "len": 1, "hash": "00" }]
        });
        let bytes = signed::sign(Kind::Condemned, &list, &self.controller_key);
        let report: serde_json::Value = serde_json::from_str(include_str!("../data/valid/report.json")).unwrap();
        let rbytes = signed::sign(Kind::Report, &report, &self.controller_key);
        for root in [&self.a, &self.b] {
            write_object(root, &format!("prune/{name}.condemned"), &bytes);
            write_object(&root.parent().unwrap().join("reports"), "drills/quickstart/20260601T030000Z-drill-1.json", &rbytes);
        }
    }

    fn saved(&self, what: &str) -> PathBuf {
        self.pristine.join(what)
    }

    /// What is put back after every case: both providers, both state folders.
    fn places(&self) -> Vec<(PathBuf, &'static str)> {
        vec![
            (self.s.a.local_root("fleet"), "a"),
            (self.s.b.local_root("fleet"), "b"),
            (self.s.path("agent-state"), "agent-state"),
            (self.s.path("controller-state"), "controller-state"),
        ]
    }

    fn save(&self) {
        for (p, n) in self.places() {
            copy_dir(&p, &self.saved(n));
        }
    }

    fn reset(&self) {
        for (p, n) in self.places() {
            copy_dir(&self.saved(n), &p);
        }
    }

    /// Runs one command of the suite: its output and peak memory.
    fn command(&mut self, c: Cmd) -> (Output, u64) {
        let s = &self.s;
        let cmd = match c {
            Cmd::Verify => s.controller(&["verify", "--read-data"]),
            Cmd::Restore => {
                self.restores += 1;
                let db = format!("restored_{}", self.restores);
                s.pg.createdb(&db);
                let mut c = s.controller(&["restore", "--snapshot", "latest", "--target", &s.pg.dsn(&db)]);
                c.arg("--identity").arg(s.path("customer.key"));
                c
            }
            Cmd::Pitr => {
                self.restores += 1;
                let pgdata = s.path(&format!("pitr-{}", self.restores));
                let mut c = s.controller(&["restore", "--pitr", "--stop", "--db-user", "bascule", "--port", &free_port().to_string()]);
                c.arg("--identity").arg(s.path("customer.key")).arg("--pgdata").arg(pgdata);
                c
            }
            Cmd::Wal => s.controller(&["wal"]),
            Cmd::Repair => s.controller(&["repair"]),
            Cmd::Prune => s.controller(&["prune"]),
            Cmd::RestoreTests => s.controller(&["restore-tests"]),
            Cmd::Sync => s.agent(&["sync"]),
            Cmd::Export => {
                let mut c = s.agent(&["snapshot", "--job", "nightly"]);
                c.env("RUST_LOG", "info");
                c
            }
        };
        let (o, rss) = measured(cmd);
        if c == Cmd::Restore && o.status.success() {
            let db = format!("restored_{}", self.restores);
            assert_eq!(s.pg.data_fingerprint("mairie"), s.pg.data_fingerprint(&db), "restored data differs:\n{}", text(&o));
        }
        (o, rss)
    }

    /// Provider A's copy of `key` made into `case`.
    fn tamper(&self, kind: &Kind2, key: &str, case: Case) {
        let path = self.a.join(key);
        let good = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let resign = |k: &AgentKey, body: serde_json::Value| signed::sign(kind.signed.expect("a signed kind"), &body, k);
        let body = || -> serde_json::Value {
            let split = good.windows(2).position(|w| w == b"\n\n").expect("an envelope");
            serde_json::from_slice(&good[split + 2..]).unwrap()
        };
        let bad: Option<Vec<u8>> = match case {
            Case::Absent => None,
            Case::Empty => Some(Vec::new()),
            Case::Truncated => Some(good[..good.len() / 2].to_vec()),
            Case::Flipped => {
                let mut b = good.clone();
                let i = b.len() - 2;
                b[i] ^= 0x01;
                Some(b)
            }
            Case::Garbage => {
                let mut b = vec![0u8; good.len()];
                getrandom::getrandom(&mut b).unwrap();
                Some(b)
            }
            Case::Oversized => {
                let f = std::fs::File::create(&path).unwrap();
                f.set_len(1 << 30).unwrap();
                return;
            }
            Case::OtherTenant => {
                let mut v = body();
                v["tenant"] = "voisine".into();
                let signer = if kind.name == "condemned list" { &self.controller_key } else { &self.agent_key };
                Some(resign(signer, v))
            }
            Case::RevokedKey => Some(resign(&self.revoked, body())),
            Case::Replayed => Some(self.old_head.clone()),
        };
        match bad {
            None => std::fs::remove_file(&path).unwrap(),
            Some(b) => std::fs::write(&path, b).unwrap(),
        }
    }

    /// Runs `cmds` against provider A serving `case` for `key`, and checks each.
    fn case(&mut self, kind: &Kind2, key: &str, case: Case, cmds: &[Cmd]) {
        for &c in cmds {
            self.tamper(kind, key, case);
            let (o, rss) = self.command(c);
            let out = text(&o);
            let what = format!("{} {key}, {case:?}, {c:?}", kind.name);
            assert!(!out.contains("panicked") && o.status.code() != Some(101), "{what}: a panic:\n{out}");
            let base = self.baseline[&c];
            assert!(rss < base + 256 * 1024, "{what}: peak memory {rss} KiB, normally {base} KiB");
            // `wal` checks records and lengths, not the files' bytes (`verify --read-data` does)
            let unread = c == Cmd::Wal && kind.signed.is_none() && matches!(case, Case::Flipped | Case::Garbage);
            let right = match c {
                _ if unread => o.status.success(),
                // what reads this kind reports it, naming provider and key
                Cmd::Verify | Cmd::Wal => !o.status.success() && out.contains("provider-a") && out.contains(key_named(key)),
                // served from B, or left alone
                _ => o.status.success(),
            };
            self.matrix.push((kind.name.to_string(), case, c, right));
            assert!(right, "{what}: wrong result (exit {:?}):\n{out}", o.status.code());
            if c == Cmd::Repair {
                // the repair made A whole again
                let (v, _) = self.command(Cmd::Verify);
                assert!(v.status.success(), "{what}: verify after repair:\n{}", text(&v));
            }
            self.reset();
        }
    }

    /// A table of the cases tried, for the note.
    fn print_matrix(&self, title: &str) {
        let mut rows: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        for (k, case, c, ok) in &self.matrix {
            rows.entry((k.clone(), format!("{case:?}"))).or_default().push(format!("{c:?} {}", if *ok { "ok" } else { "FAILED" }));
        }
        println!("\n{title}\n| kind | case | commands |\n|---|---|---|");
        for ((k, case), cmds) in rows {
            println!("| {k} | {case} | {} |", cmds.join(", "));
        }
    }
}

/// What an error names: the key, or for a WAL file or record, the file's name.
fn key_named(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key).trim_end_matches(".rec")
}

fn write_object(root: &Path, key: &str, bytes: &[u8]) {
    let p = root.join(key);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

/// An object kind of the format.
struct Kind2 {
    name: &'static str,
    /// The kind of its signed envelope, if it has one.
    signed: Option<Kind>,
}

/// The first key under `prefix` on A matching `pred`.
fn first_key(root: &Path, prefix: &str, pred: impl Fn(&str) -> bool) -> String {
    let mut keys = Vec::new();
    let mut stack = vec![root.join(prefix)];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                keys.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    keys.sort();
    keys.into_iter().find(|k| pred(k)).unwrap_or_else(|| panic!("no object under {prefix} on {}", root.display()))
}

/// The serve process watching the tenant while the cases run.
fn serve(w: &World, extra: &str) -> (KillOnDrop, String) {
    let port = free_port();
    let cfg = w.s.path("controller-serve.yaml");
    // a state folder of its own: the cases put the controller's back as it was
    let state = w.s.path("controller-state").display().to_string();
    let yaml =
        std::fs::read_to_string(w.s.path("controller.yaml")).unwrap().replace(&state, &w.s.path("serve-state").display().to_string())
            + &format!("serve:\n  listen: 127.0.0.1:{port}\n  interval: 1s\n  deep_interval: 1s\n{extra}");
    std::fs::write(&cfg, yaml).unwrap();
    let serve = bascule_tests::spawn_serve(&cfg, &w.s.path("serve.log"));
    let base = format!("http://127.0.0.1:{port}");
    wait_until("serve to answer", Duration::from_secs(30), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    (serve, base)
}

/// After the cases: serve is alive, still cycling, and (where its monitor
/// reads what was tampered with: HEAD, every second) counted refusals.
fn serve_survived(base: &str, started: f64, refusals: bool) {
    let m = get(&format!("{base}/metrics"));
    let last = metric(&m, "bascule_monitor_last_cycle_timestamp_seconds").unwrap_or(0.0);
    assert!(last > started, "the monitor kept cycling:\n{m}");
    assert!(!refusals || m.contains("bascule_integrity_failures_total"), "refusals are counted:\n{m}");
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

#[test]
fn a_provider_serving_bad_heads_manifests_indexes_and_packs() {
    let mut w = World::new();
    let (_serve, base) = serve(&w, "");
    let t0 = now();
    let head = Kind2 { name: "HEAD", signed: Some(Kind::Head) };
    let mut head_cases = SIGNED.to_vec();
    head_cases.push(Case::Replayed);
    for &c in &head_cases {
        w.case(&head, "HEAD", c, &[Cmd::Verify, Cmd::Restore, Cmd::Sync, Cmd::Export]);
    }
    let manifest = Kind2 { name: "manifest", signed: Some(Kind::Manifest) };
    let mkey = first_key(&w.a, "snapshots", |k| k.ends_with(".manifest"));
    for &c in SIGNED {
        w.case(&manifest, &mkey, c, &[Cmd::Verify, Cmd::Restore, Cmd::Repair, Cmd::Prune, Cmd::Sync]);
    }
    let index = Kind2 { name: "index", signed: None };
    let ikey = mkey.replace(".manifest", ".index");
    for &c in BYTES {
        w.case(&index, &ikey, c, &[Cmd::Verify, Cmd::Restore, Cmd::Repair, Cmd::Sync]);
    }
    let pack = Kind2 { name: "pack", signed: None };
    let pkey = first_key(&w.a, "packs", |_| true);
    for &c in BYTES {
        w.case(&pack, &pkey, c, &[Cmd::Verify, Cmd::Restore, Cmd::Repair, Cmd::Sync, Cmd::Export]);
    }
    serve_survived(&base, t0, true);
    w.print_matrix("HEAD, manifest, index, pack on provider A");
}

#[test]
fn a_provider_serving_bad_wal_and_base_backups() {
    let mut w = World::new();
    let record = Kind2 { name: "WAL record", signed: Some(Kind::Wal) };
    let rkey = first_key(&w.a, "wal", |k| k.ends_with(".rec") && !k.contains(".history") && !k.contains(".backup"));
    for &c in SIGNED {
        w.case(&record, &rkey, c, &[Cmd::Wal, Cmd::Verify, Cmd::Repair, Cmd::Pitr, Cmd::Prune]);
    }
    let file = Kind2 { name: "WAL file", signed: None };
    let fkey = rkey.trim_end_matches(".rec").to_string();
    for &c in BYTES {
        w.case(&file, &fkey, c, &[Cmd::Wal, Cmd::Verify, Cmd::Repair, Cmd::Pitr]);
    }
    // the base backup's manifest
    let manifest = Kind2 { name: "base backup manifest", signed: Some(Kind::Manifest) };
    let names: Vec<String> =
        std::fs::read_dir(w.a.join("snapshots")).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    let base = names
        .iter()
        .filter(|n| n.ends_with(".manifest"))
        .map(|n| format!("snapshots/{n}"))
        .find(|k| std::fs::read_to_string(w.a.join(k)).unwrap_or_default().contains("\"basebackup\""))
        .expect("a base backup's manifest");
    for &c in &[Case::Flipped, Case::Garbage, Case::Oversized, Case::RevokedKey] {
        w.case(&manifest, &base, c, &[Cmd::Pitr, Cmd::Prune, Cmd::Verify]);
    }
    w.print_matrix("WAL record, WAL file, base backup on provider A");
}

#[test]
fn a_provider_serving_bad_lists_results_reports_and_odd_names() {
    let mut w = World::new();
    let (_serve, base) = serve(&w, "");
    let t0 = now();
    let list = Kind2 { name: "condemned list", signed: Some(Kind::Condemned) };
    let lkey = first_key(&w.a, "prune", |k| k.ends_with(".condemned"));
    for &c in SIGNED {
        w.case(&list, &lkey, c, &[Cmd::Prune, Cmd::Export]);
    }
    let result = Kind2 { name: "restore-test result", signed: Some(Kind::RestoreTest) };
    let tkey = first_key(&w.a, "reports/restore-tests", |_| true);
    for &c in SIGNED {
        w.case(&result, &tkey, c, &[Cmd::RestoreTests]);
    }
    // a drill report, under the reports' own prefix: no command reads it back,
    // every command still goes on
    let reports = w.a.parent().unwrap().join("reports");
    let rkey = first_key(&reports, "drills", |_| true);
    std::fs::write(reports.join(&rkey), b"garbage").unwrap();
    for c in [Cmd::Verify, Cmd::Repair, Cmd::Prune] {
        let (o, _) = w.command(c);
        assert!(o.status.success(), "a damaged report, {c:?}:\n{}", text(&o));
        w.matrix.push(("drill report".into(), Case::Garbage, c, true));
    }
    w.reset();
    // stray objects with odd names under every prefix
    let odd = [
        "snapshots/99991231T235959Z-ffffffff.manifest",
        "snapshots/x/../y.manifest",
        "snapshots/é.manifest",
        "packs/zz/not-a-pack",
        "wal/00000001/0000000é000000000000000.rec",
        "wal/00000001/000000010000000000000099",
        "wal/0000000Z/000000010000000000000001.rec",
        "prune/junk.condemned",
        "prune/99991231T235959Z-ffffffff.condemned",
        "reports/restore-tests/é.json",
    ];
    let long = format!("snapshots/{}.manifest", "x".repeat(200));
    for key in odd.iter().map(|k| k.to_string()).chain([long]) {
        write_object(&w.a, &key.replace("/../", "/.../"), b"planted by the provider");
    }
    if is_root() {
        ok(Command::new("chown").args(["-R", "postgres"]).arg(&w.a));
    }
    for &c in ALL_CMDS {
        let (o, rss) = w.command(c);
        let out = text(&o);
        assert!(!out.contains("panicked"), "odd names, {c:?}: a panic:\n{out}");
        assert!(rss < w.baseline[&c] + 256 * 1024, "odd names, {c:?}: {rss} KiB");
        // what reports reports the planted objects; everything else goes on
        let right = match c {
            Cmd::Verify | Cmd::Wal | Cmd::Repair | Cmd::RestoreTests => out.contains("provider-a"),
            _ => o.status.success(),
        };
        assert!(right, "odd names, {c:?} (exit {:?}):\n{out}", o.status.code());
        w.matrix.push(("stray objects, odd names".into(), Case::Garbage, c, right));
    }
    serve_survived(&base, t0, false);
    // the scheduled prune counts what it could not trust
    let (_pruning, base) = serve(&w, "prune:\n  cron: \"*/2 * * * * *\"\n");
    let mut m = String::new();
    wait_until("a scheduled prune", Duration::from_secs(60), || {
        m = get(&format!("{base}/metrics"));
        metric(&m, &format!("bascule_prune_last_run_timestamp_seconds{{tenant=\"{}\"}}", w.s.tenant)).is_some()
    });
    let tenant = format!("{{tenant=\"{}\"}}", w.s.tenant);
    assert!(metric(&m, &format!("bascule_prune_unverified_manifests{tenant}")).unwrap() >= 1.0, "{m}");
    assert!(metric(&m, &format!("bascule_prune_refused_lists{tenant}")).unwrap() >= 1.0, "{m}");
    w.print_matrix("condemned list, restore-test result, drill report, stray objects on provider A");
}
