//! The on-site restore test: `bascule-agent restore-test` restores the newest
//! export into a scratch database on the customer's server, passes on a good
//! export (and on one damaged on one provider only), fails and says so on one
//! damaged on both; the controller shows each result without any key, and
//! its metrics follow.
use std::time::Duration;

use bascule_tests::http::{get, metric};
use bascule_tests::{flip, run, text, wait_until, Scenario};

fn restore_test(s: &Scenario) -> (bool, String) {
    let o = run(s.agent(&["restore-test", "--job", "nightly"]).arg("--identity").arg(s.path("customer.key")));
    (o.status.success(), text(&o))
}

fn scratch_databases(s: &Scenario) -> String {
    s.pg.psql("postgres", "SELECT string_agg(datname, ',') FROM pg_database WHERE datname LIKE 'bascule_restore_test_%'").trim().to_string()
}

#[test]
fn restore_test_passes_on_a_good_export_and_fails_on_a_damaged_one_and_the_controller_shows_both() {
    let s = Scenario::start(3_000);
    let o = s.snapshot();
    assert!(o.status.success(), "{}", text(&o));
    let snapshot = Scenario::snapshot_name(&o);

    // the controller watches the tenant
    let (_serve, base) = s.serve("");
    let metrics = || get(&format!("{base}/metrics"));
    wait_until("serve's metrics", Duration::from_secs(60), || {
        bascule_tests::http::curl("GET", &format!("{base}/healthz"), None, None, &[]).0 == 200
    });
    let last_success = "bascule_restore_test_last_success_timestamp_seconds{tenant=\"mairie-exemple\"}";
    let passed = "bascule_restore_test_passed{tenant=\"mairie-exemple\"}";
    assert_eq!(metric(&metrics(), passed), None, "no restore test yet");

    // a good export: PASS, and the scratch database is gone
    let before = chrono::Utc::now().timestamp() as f64;
    let (ok, out) = restore_test(&s);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("restore test of {snapshot} (job nightly): PASS")) && out.contains("tables"), "{out}");
    assert_eq!(scratch_databases(&s), "", "the scratch database is dropped");
    let listed = run(&mut s.controller(&["restore-tests"]));
    let shown = text(&listed);
    assert!(listed.status.success(), "{shown}");
    assert!(shown.lines().any(|l| l.contains(&snapshot) && l.contains("PASS")), "{shown}");
    wait_until("the pass in the controller's metrics", Duration::from_secs(30), || {
        let m = metrics();
        metric(&m, passed) == Some(1.0) && metric(&m, last_success).is_some_and(|t| t >= before)
    });
    let first_success = metric(&metrics(), last_success).unwrap();

    // damage the export on one provider: the other serves it, still PASS
    let (a, b) = (s.provider(&s.a), s.provider(&s.b));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let pack = rt.block_on(a.list("packs/")).unwrap().into_keys().next().unwrap();
    flip(&rt, &a, &pack);
    let (ok, out) = restore_test(&s);
    assert!(ok, "a copy damaged on one provider is read from the other:\n{out}");

    // …and on both: FAIL, named, reported, and the scratch database still dropped
    flip(&rt, &b, &pack);
    let (ok, out) = restore_test(&s);
    assert!(!ok, "{out}");
    assert!(out.contains("FAIL") && out.contains(&pack), "the failure names the damaged object:\n{out}");
    assert_eq!(scratch_databases(&s), "", "the scratch database is dropped after a failure too");
    let listed = run(&mut s.controller(&["restore-tests"]));
    let shown = text(&listed);
    assert!(!listed.status.success(), "the newest test failed:\n{shown}");
    let rows: Vec<&str> = shown.lines().filter(|l| l.contains(&snapshot)).collect();
    assert_eq!(rows.len(), 3, "{shown}");
    assert!(rows[0].contains("PASS") && rows[1].contains("PASS") && rows[2].contains("FAIL") && rows[2].contains(&pack), "{shown}");
    assert!(!shown.contains("REFUSED"), "every result verifies: {shown}");
    wait_until("the failure in the controller's metrics", Duration::from_secs(30), || metric(&metrics(), passed) == Some(0.0));
    let m = metrics();
    assert!(metric(&m, last_success).unwrap() >= first_success, "the last success stays");

    // a result forged on a provider is refused
    let forged_key = "reports/restore-tests/20990101T000000Z-nightly.json".to_string();
    rt.block_on(a.put(&forged_key, bytes::Bytes::from_static(b"{\"passed\": true}"))).unwrap();
    let shown = text(&run(&mut s.controller(&["restore-tests"])));
    assert!(shown.lines().any(|l| l.starts_with("REFUSED") && l.contains(&forged_key)), "{shown}");
}
