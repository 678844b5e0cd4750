//! `scripts/fuzz.sh [SECONDS] [TARGET…]`: every fuzz target (or those
//! named) for SECONDS each (default 60), after replaying the failures kept
//! from earlier runs. A new failure is kept under
//! `tests/data/fuzz-regressions/<target>/` and makes the exit status 1.
use std::time::{Duration, Instant};

use bascule_tests::fuzz::{regressions_dir, replay, run, targets};

fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().map(|a| a.parse().expect("SECONDS: a whole number")).unwrap_or(60);
    let only: Vec<String> = args.collect();
    // the fuzzer looks for panics: they are reported once, shrunk, not printed each time
    std::panic::set_hook(Box::new(|_| {}));
    let mut failed = false;
    println!("| target | cases | seconds | failures |\n|---|---|---|---|");
    for t in targets().iter().filter(|t| only.is_empty() || only.iter().any(|o| o == t.name)) {
        let replayed = replay(t);
        let t0 = Instant::now();
        let o = run(t, Duration::from_secs(seconds));
        println!(
            "| {} | {} | {:.0} | {} (and {replayed} kept failure(s) replayed) |",
            t.name,
            o.cases,
            t0.elapsed().as_secs_f64(),
            o.failures.len()
        );
        for (input, why) in &o.failures {
            failed = true;
            let dir = regressions_dir(t.name);
            std::fs::create_dir_all(&dir).expect("the regressions folder");
            let file = dir.join(format!("{}.bin", &blake3::hash(input).to_hex()[..16]));
            std::fs::write(&file, input).expect("the regression file");
            eprintln!("FAILURE in {}: {why}\n  minimal input ({} bytes) kept in {}", t.name, input.len(), file.display());
        }
    }
    std::process::exit(i32::from(failed));
}
