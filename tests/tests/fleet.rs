//! The controller as a fleet: three `serve` replicas on one PostgreSQL
//! state, two Garage providers, 5,000 tenants with signed HEADs. Each tenant
//! is watched by exactly one replica; a SIGKILLed replica's tenants and its
//! running drill are taken over; writes under a lost lease are refused; the
//! audit chain verifies and stays append-only; rollback marks never go down.
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bascule_controller::state::fleet::{Fleet, PgMarks, DRILL};
use bascule_controller::state::{Fence, NewDrill, Pg, Store};
use bascule_core::head::Marks;
use bascule_core::postgres::connect::Connect;
use bascule_tests::http::curl;
use bascule_tests::PgCluster;
use bascule_tests::{bin, free_port, run, spawn_serve, text, token, wait_until, write, KillOnDrop};

const TENANTS: usize = 5_000;
const LEASE: Duration = Duration::from_secs(6);
const INTERVAL: Duration = Duration::from_secs(2);

fn state_db() -> (PgCluster, String) {
    let pg = PgCluster::start();
    pg.createdb("bascule_state");
    let dsn = pg.dsn("bascule_state");
    (pg, dsn)
}

fn connect(dsn: &str) -> Connect {
    Connect::parse(dsn).unwrap()
}

/// Each tenant a replica's /metrics says it holds.
fn held(base: &str) -> Option<BTreeSet<String>> {
    let (code, body) = curl("GET", &format!("{base}/metrics"), None, None, &[]);
    (code == 200).then(|| {
        body.lines()
            .filter(|l| l.starts_with("bascule_tenant_held{"))
            .filter_map(|l| l.split("tenant=\"").nth(1)?.split('"').next().map(str::to_string))
            .collect()
    })
}

/// Tenant → the replicas that say they hold it.
fn union(bases: &[(&str, &str)]) -> BTreeMap<String, Vec<String>> {
    let mut all: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, base) in bases {
        for t in held(base).unwrap_or_default() {
            all.entry(t).or_default().push(name.to_string());
        }
    }
    all
}

/// Whether every tenant is held by exactly one of `bases`.
fn each_once(bases: &[(&str, &str)], names: &[String]) -> bool {
    let u = union(bases);
    u.len() == names.len() && u.values().all(|v| v.len() == 1)
}

#[test]
fn leases_fence_writes_marks_only_rise_and_the_schema_is_versioned() {
    let (pg, dsn) = state_db();
    let dir = tempfile::tempdir().unwrap();
    let open = || Store::open_postgres(Pg::open(connect(&dsn)).unwrap(), dir.path()).unwrap();
    let mut store = open();
    // a second open finds the schema up to date; a newer one is refused
    drop(open());
    assert_eq!(pg.psql("bascule_state", "SELECT string_agg(version::text, ',' ORDER BY version) FROM schema_migrations"), "1,2,3,4");

    // a drill's lease: held by a, refused to b until it runs out, then b's
    let id = store
        .create_drill(&NewDrill {
            runbook: "r",
            runbook_file: Path::new("/r.yaml"),
            runbook_hash: "h",
            mode: bascule_controller::model::Mode::Drill,
            started_by: "alice",
            host: "h",
            rto_target: Duration::from_secs(3600),
            rpo_target: None,
        })
        .unwrap();
    let lease = Duration::from_secs(2);
    let a = Fleet::new(Pg::open(connect(&dsn)).unwrap(), "a".into(), lease);
    let b = Fleet::new(Pg::open(connect(&dsn)).unwrap(), "b".into(), lease);
    let ea = a.claim(DRILL, &id.to_string()).unwrap().expect("a takes the free lease");
    assert_eq!(b.claim(DRILL, &id.to_string()).unwrap(), None, "b cannot take a lease a holds");
    store.fence(Fence { drill: id, holder: "a".into(), epoch: ea, lost: None });
    store.set_variable(id, "x", "1").unwrap();
    store.record_attempt(id, "s", 1, chrono::Utc::now(), true, "ok").unwrap();
    std::thread::sleep(lease + Duration::from_millis(500));
    let eb = b.claim(DRILL, &id.to_string()).unwrap().expect("b takes the expired lease");
    assert!(eb > ea, "the epoch rises with the new holder: {ea} then {eb}");
    // a, stale, writes nothing more
    let e = store.set_variable(id, "x", "2").unwrap_err().to_string();
    assert!(e.contains("taken over") && e.contains("held by b"), "{e}");
    assert!(store.record_attempt(id, "s", 2, chrono::Utc::now(), true, "late").is_err());
    assert!(store.set_status(id, "alice", bascule_controller::model::DrillStatus::Failed).is_err());
    assert!(!a.renew(DRILL, &id.to_string(), ea).unwrap(), "a's renewal is refused");
    let mut sb = open();
    sb.fence(Fence { drill: id, holder: "b".into(), epoch: eb, lost: None });
    sb.set_variable(id, "x", "3").unwrap();
    assert_eq!(open().variables(id).unwrap(), vec![("x".to_string(), "3".to_string())]);
    assert_eq!(open().attempts(id, "s").unwrap().len(), 1, "the stale attempt was not written");

    // names with quotes, SQL and non-ASCII letters are parameters, never SQL
    let odd = Fleet::new(Pg::open(connect(&dsn)).unwrap(), "c'; DROP TABLE leases; --é".into(), lease);
    assert_eq!(odd.claim(DRILL, "x'); DELETE FROM drills; --").unwrap(), Some(1));
    assert_eq!(odd.holder(DRILL, "x'); DELETE FROM drills; --").unwrap().as_deref(), Some("c'; DROP TABLE leases; --é"));
    assert_eq!(pg.psql("bascule_state", "SELECT count(*) FROM drills"), "1");

    // rollback marks: eight writers at once, each with its own connection; the highest stays
    let threads: Vec<_> = (0..8u64)
        .map(|i| {
            let dsn = dsn.clone();
            std::thread::spawn(move || {
                let m = PgMarks(Pg::open(connect(&dsn)).unwrap());
                for n in 0..40u64 {
                    m.raise("t@p", 1000 - n * 8 - i).unwrap();
                    m.raise("u@p", n * 8 + i).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let m = PgMarks(Pg::open(connect(&dsn)).unwrap());
    assert_eq!(m.read("t@p").unwrap(), 1000, "the first, highest mark stays");
    assert_eq!(m.read("u@p").unwrap(), 39 * 8 + 7);
    m.raise("u@p", 3).unwrap();
    assert_eq!(m.read("u@p").unwrap(), 39 * 8 + 7, "a lower raise changes nothing");
    let o = run(&mut pg.cmd("psql", &["-X", "-d", &dsn, "-c", "UPDATE head_marks SET sequence = 1 WHERE name = 'u@p'"]));
    assert!(!o.status.success() && text(&o).contains("cannot go down"), "{}", text(&o));
    for sql in ["DELETE FROM head_marks", "TRUNCATE head_marks"] {
        let o = run(&mut pg.cmd("psql", &["-X", "-d", &dsn, "-c", sql]));
        assert!(!o.status.success() && text(&o).contains("not deleted"), "{sql}: {}", text(&o));
    }
    // a mark the store lost (restored from an old copy) is raised again by a holder that saw more
    let g = bascule_core::head::RollbackGuard::with(std::sync::Arc::new(PgMarks(Pg::open(connect(&dsn)).unwrap())), "v@p").unwrap();
    g.observe(50).unwrap();
    pg.psql("bascule_state", "ALTER TABLE head_marks DISABLE TRIGGER USER; UPDATE head_marks SET sequence = 2 WHERE name = 'v@p'; ALTER TABLE head_marks ENABLE TRIGGER USER");
    assert_eq!(g.seen().unwrap(), 50);
    assert_eq!(m.read("v@p").unwrap(), 50, "the holder raised the lost mark again");

    // a revoked key's mark: the first replica to record it wins, every replica reads the same
    let keys = vec!["ed25519:old".to_string()];
    let first = m.revoked("t", &keys, &BTreeMap::new(), || Ok(40)).unwrap();
    let later = PgMarks(Pg::open(connect(&dsn)).unwrap()).revoked("t", &keys, &BTreeMap::new(), || Ok(45)).unwrap();
    assert_eq!((first["ed25519:old"], later["ed25519:old"]), (40, 40));

    // the audit log is append-only in PostgreSQL too
    for sql in ["UPDATE audit SET detail = 'x' WHERE seq = 1", "DELETE FROM audit", "TRUNCATE audit"] {
        let o = run(&mut pg.cmd("psql", &["-X", "-d", &dsn, "-c", sql]));
        assert!(!o.status.success() && text(&o).contains("append-only"), "{sql}: {}", text(&o));
    }
    assert!(matches!(open().verify_audit().unwrap(), Ok(n) if n >= 1));

    // a schema a newer controller wrote is refused, with what to do
    pg.psql("bascule_state", "INSERT INTO schema_migrations VALUES (99, 'future', 'x', 'now')");
    let e = Store::open_postgres(Pg::open(connect(&dsn)).unwrap(), dir.path()).err().unwrap();
    assert!(format!("{e:#}").contains("schema version 99"), "{e:#}");
}

/// The three replicas' configurations: same state, same tenants, same
/// runbooks; each its own port, state_dir and name.
struct Replica {
    name: &'static str,
    cfg: std::path::PathBuf,
    base: String,
    log: std::path::PathBuf,
}

#[test]
fn three_replicas_share_five_thousand_tenants_and_take_over_a_killed_one() {
    let (pg, dsn) = state_db();
    let d = bascule_tests::shared_tempdir();
    let (ga, gb) = (bascule_tests::Garage::start("provider-a"), bascule_tests::Garage::start("provider-b"));
    let providers = format!("{}{}", ga.provider_yaml(d.path(), "fleet"), gb.provider_yaml(d.path(), "fleet"));
    let key = bascule_core::keys::AgentKey::generate();
    let names: Vec<String> = (0..TENANTS).map(|i| format!("mairie-{i:05}")).collect();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let t0 = Instant::now();
    bascule_tests::put_heads(&rt, &providers, &names, &key, 7);
    println!("{} signed HEADs written in {:.1} s", 2 * TENANTS, t0.elapsed().as_secs_f64());

    let (operator, operator_line) = token("bob", "operator");
    let runbooks = d.path().join("runbooks");
    std::fs::create_dir(&runbooks).unwrap();
    let out = d.path().join("out");
    std::fs::create_dir(&out).unwrap();
    // asks, writes a line, waits long enough to be killed in, writes another
    write(
        &runbooks.join("handover.yaml"),
        &format!(
            "name: handover\ntargets: {{ rto: 1h }}\nstages:\n  - name: ask\n    steps:\n      - id: go\n        approval: {{ prompt: \"Go?\" }}\n        timeout: 5m\n  - name: work\n    steps:\n      - id: one\n        shell: {{ command: \"echo x >> {o}/one\" }}\n      - id: wait\n        shell: {{ command: \"touch {o}/waiting; sleep 6\" }}\n        timeout: 2m\n      - id: three\n        shell: {{ command: \"echo x >> {o}/three\" }}\n",
            o = out.display()
        ),
    );
    let tenants: String = names.iter().map(|n| format!("  - {{ name: {n}, verify_keys: [\"{}\"] }}\n", key.verify_key())).collect();
    let replicas = configure(d.path(), &dsn, &providers, &tenants, &operator_line, &runbooks);
    let logs = |rs: &[Replica]| -> String {
        rs.iter().map(|r| format!("--- {}:\n{}", r.name, tail(&std::fs::read_to_string(&r.log).unwrap_or_default()))).collect()
    };
    let mut procs: Vec<Option<KillOnDrop>> = replicas.iter().map(|r| Some(spawn_serve(&r.cfg, &r.log))).collect();
    for r in &replicas {
        wait_until(&format!("{} answers /readyz", r.name), Duration::from_secs(120), || {
            curl("GET", &format!("{}/readyz", r.base), None, None, &[]).0 == 200
        });
    }
    let bases: Vec<(&str, &str)> = replicas.iter().map(|r| (r.name, r.base.as_str())).collect();

    // each tenant watched by exactly one replica, and each replica watching
    // some (a replica ready before the others holds every tenant until it
    // sees them alive and gives back what is above its share)
    let t0 = Instant::now();
    let shared = || each_once(&bases, &names) && bases.iter().all(|(_, b)| held(b).is_some_and(|h| !h.is_empty()));
    while !shared() {
        assert!(t0.elapsed() < Duration::from_secs(180), "tenants not shared once each by every replica:\n{}", logs(&replicas));
        std::thread::sleep(Duration::from_secs(1));
    }
    println!("every tenant held once, {:.1} s after the replicas were ready", t0.elapsed().as_secs_f64());
    let shares: Vec<usize> = bases.iter().map(|(_, b)| held(b).unwrap().len()).collect();
    println!("tenants per replica: {shares:?}");
    assert!(shares.iter().all(|&n| n > 0), "every replica holds a share: {shares:?}");
    // every HEAD's mark is in the shared state, at the sequence the providers serve
    wait_until("every mark at 7", Duration::from_secs(120), || {
        pg.psql("bascule_state", "SELECT count(*) FROM head_marks WHERE sequence = 7") == (2 * TENANTS).to_string()
    });

    // a drill started through r1, visible on r2, approved through r3
    let (code, body) = curl("POST", &format!("{}/v1/drills", replicas[0].base), Some(&operator), Some(r#"{"runbook":"handover"}"#), &[]);
    assert_eq!(code, 202, "{body}");
    let id: i64 = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"].as_i64().unwrap();
    let status = |r: &Replica| -> String {
        let (code, body) = curl("GET", &format!("{}/v1/drills/{id}", r.base), Some(&operator), None, &[]);
        assert_eq!(code, 200, "{}: {body}", r.name);
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["status"].as_str().unwrap_or_default().to_string()
    };
    assert_eq!(status(&replicas[1]), "running", "r2 sees the drill r1 runs");
    let (code, body) =
        curl("POST", &format!("{}/v1/drills/{id}/approve", replicas[2].base), Some(&operator), Some(r#"{"step":"go"}"#), &[]);
    assert_eq!(code, 200, "{body}");
    wait_until("the drill, approved on r3, goes on on r1", Duration::from_secs(60), || out.join("waiting").exists());
    assert_eq!(
        pg.psql("bascule_state", &format!("SELECT holder FROM leases WHERE kind = 'drill' AND name = '{id}'")),
        "r1",
        "r1, which started the drill, holds it"
    );

    // SIGKILL r1 in the middle of a step
    let r1_tenants = held(&replicas[0].base).unwrap();
    let killed = Instant::now();
    drop(procs[0].take());
    let survivors = &bases[1..];
    while !each_once(survivors, &names) {
        assert!(killed.elapsed() < LEASE + 3 * INTERVAL + Duration::from_secs(30), "r1's tenants not taken over:\n{}", logs(&replicas));
        std::thread::sleep(Duration::from_millis(250));
    }
    let takeover = killed.elapsed();
    println!(
        "r1's {} tenants taken over by r2 and r3 in {:.1} s (lease {} s, interval {} s)",
        r1_tenants.len(),
        takeover.as_secs_f64(),
        LEASE.as_secs(),
        INTERVAL.as_secs()
    );
    // within the lease, a round of the survivors' leases (a third of it), the
    // round of their monitor under way when they claimed it, and the round
    // that reads what they gained (measured: this machine may be loaded)
    let round = survivors
        .iter()
        .filter_map(|(_, b)| {
            bascule_tests::http::metric(&curl("GET", &format!("{b}/metrics"), None, None, &[]).1, "bascule_monitor_round_seconds")
        })
        .fold(0.0, f64::max);
    assert!(round > 0.0, "the survivors' monitors report their rounds");
    let bound = LEASE + LEASE / 3 + INTERVAL + Duration::from_secs_f64(2.0 * round) + Duration::from_secs(2);
    println!("takeover bound: {:.1} s (survivors' longest round {round:.1} s)", bound.as_secs_f64());
    assert!(takeover <= bound, "takeover took {takeover:?}, above {bound:?}");

    // the drill is resumed once, by r2 or r3, and passes
    wait_until("the drill passes after its takeover", Duration::from_secs(120), || status(&replicas[1]) == "passed");
    let lines = |f: &str| std::fs::read_to_string(out.join(f)).unwrap_or_default().lines().count();
    assert_eq!(lines("one"), 1, "a step that had ended is not run again");
    assert_eq!(lines("three"), 1, "the drill ran to its end once");
    let resumes = pg.psql("bascule_state", &format!("SELECT actor FROM audit WHERE drill = {id} AND event = 'drill-resume'"));
    assert!(resumes == "serve:r2" || resumes == "serve:r3", "one resume, by a survivor: {resumes:?}");

    replayed_head_is_refused_and_the_mark_stays(&pg, &rt, &providers, &gb, d.path(), &key, &names[TENANTS / 2], survivors);

    // any replica answers for every tenant; the audit chain verifies
    let (code, body) = curl("GET", &format!("{}/v1/tenants", replicas[2].base), Some(&operator), None, &[]);
    assert_eq!(code, 200, "{body}");
    let view: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(view.len(), TENANTS, "r3 shows every tenant, whichever replica watches it");
    let a = run(Command::new(bin("bascule-controller")).args(["drill", "audit", "--verify", "--config"]).arg(&replicas[1].cfg));
    assert!(a.status.success(), "{}", text(&a));

    // a clean stop gives the leases back at once
    let r3 = procs[2].take().unwrap();
    let stopped = Instant::now();
    stop(r3, "TERM");
    while !each_once(&bases[1..2], &names) {
        assert!(
            stopped.elapsed() < LEASE + Duration::from_secs(30),
            "r3's tenants not taken over after its clean stop:\n{}",
            logs(&replicas)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    println!("after r3's clean stop, r2 held every tenant in {:.1} s", stopped.elapsed().as_secs_f64());
    drop(procs);
}

/// The three replicas' configurations: same state, tenants and runbooks;
/// each its own port, state_dir and name.
fn configure(d: &Path, dsn: &str, providers: &str, tenants: &str, operator_line: &str, runbooks: &Path) -> Vec<Replica> {
    ["r1", "r2", "r3"]
        .into_iter()
        .map(|name| {
            let port = free_port();
            let cfg = d.join(format!("{name}.yaml"));
            write(
                &cfg,
                &format!(
                    "state_dir: {d}/{name}\nreport_key: {d}/report.key\nstate:\n  postgres: \"{dsn}\"\n  lease: {lease}s\n  replica: {name}\nproviders:\n{providers}tenants:\n{tenants}serve:\n  listen: 127.0.0.1:{port}\n  interval: {interval}s\n  concurrency: 64\n  runbooks_dir: {rb}\n  tokens:\n    {operator_line}\n",
                    d = d.display(),
                    lease = LEASE.as_secs(),
                    interval = INTERVAL.as_secs(),
                    rb = runbooks.display()
                ),
            );
            Replica { name, cfg, base: format!("http://127.0.0.1:{port}"), log: d.join(format!("{name}.log")) }
        })
        .collect()
}

/// Rollback marks are never lowered while replicas observe: a tenant's HEAD
/// rises to 9; then one provider replays its old, validly signed HEAD (8).
#[allow(clippy::too_many_arguments)]
fn replayed_head_is_refused_and_the_mark_stays(
    pg: &PgCluster,
    rt: &tokio::runtime::Runtime,
    providers: &str,
    gb: &bascule_tests::Garage,
    dir: &Path,
    key: &bascule_core::keys::AgentKey,
    victim: &str,
    survivors: &[(&str, &str)],
) {
    bascule_tests::put_heads(rt, providers, &[victim.to_string()], key, 9);
    let mark = |p: &str| pg.psql("bascule_state", &format!("SELECT sequence FROM head_marks WHERE name = '{victim}@{p}'"));
    wait_until("the victim's marks at 9", Duration::from_secs(60), || mark("provider-a") == "9" && mark("provider-b") == "9");
    let b_only = gb.provider_yaml(dir, "fleet");
    bascule_tests::put_heads(rt, &b_only, &[victim.to_string()], key, 8);
    wait_until("the replayed HEAD is refused by the tenant's holder", Duration::from_secs(60), || {
        survivors.iter().any(|(_, b)| {
            curl("GET", &format!("{b}/metrics"), None, None, &[]).1.lines().any(|l| {
                l.starts_with("bascule_integrity_failures_total{")
                    && [format!("tenant=\"{victim}\""), "provider=\"provider-b\"".into(), "reason=\"rollback\"".into()]
                        .iter()
                        .all(|p| l.contains(p.as_str()))
            })
        })
    });
    assert_eq!(mark("provider-b"), "9", "the mark stays at 9");
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Sends a signal and waits for the process to end.
fn stop(mut p: KillOnDrop, sig: &str) {
    let o = run(Command::new("kill").args([&format!("-{sig}"), &p.0.id().to_string()]));
    assert!(o.status.success(), "{}", text(&o));
    let t0 = Instant::now();
    while p.0.try_wait().unwrap().is_none() {
        assert!(t0.elapsed() < Duration::from_secs(60), "the process did not stop on SIG{sig}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
