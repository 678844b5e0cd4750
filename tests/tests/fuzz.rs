//! The fuzz targets, briefly (`scripts/fuzz.sh` runs them for long), and
//! every failure a longer run found and kept, replayed.
use std::time::Duration;

#[test]
fn every_fuzz_target_runs_and_every_kept_failure_now_passes() {
    let targets = bascule_tests::fuzz::targets();
    assert!(targets.len() >= 8, "{} targets", targets.len());
    for t in &targets {
        bascule_tests::fuzz::replay(t);
        let o = bascule_tests::fuzz::run(t, Duration::from_millis(700));
        assert!(o.cases > 0, "{}: no case ran", t.name);
        assert!(o.failures.is_empty(), "{}: {:?}", t.name, o.failures.iter().map(|f| &f.1).collect::<Vec<_>>());
    }
}
