//! `bascule-agent run`: jobs on their cron schedule, never two runs of one
//! job at once, a clean stop on SIGTERM.
use std::time::Duration;

use bascule_tests::{text, Scenario};

#[test]
fn runs_on_schedule_skips_overlaps_and_stops_on_sigterm() {
    let s = Scenario::start(20_000);
    // every second, on a thin uplink: each run lasts longer than a tick
    s.write_configs("  max_bandwidth: 128KiB\n");
    let yaml = std::fs::read_to_string(s.path("agent.yaml")).unwrap().replace("schedule: \"30 1 * * *\"", "schedule: \"* * * * * *\"");
    std::fs::write(s.path("agent.yaml"), yaml).unwrap();
    let child = s.agent(&["run"]).stderr(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    std::thread::sleep(Duration::from_secs(4));
    // SIGTERM, as systemd sends it
    assert!(std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap().success());
    let t0 = std::time::Instant::now();
    let out = child.wait_with_output().unwrap();
    let log = text(&out);
    assert!(out.status.success(), "daemon must exit 0 on SIGTERM:\n{log}");
    assert!(t0.elapsed() < Duration::from_secs(30), "stopped within its deadline");
    assert!(log.contains("Job scheduled"), "{log}");
    assert!(log.contains("Previous run still going; this tick is skipped"), "{log}");
    let started = log.matches("export started").count();
    assert_eq!(started, 1, "one run at a time:\n{log}");
    assert!(log.contains("Stopping: cancelling running jobs"), "{log}");
    // the cancelled run committed nothing, so the providers hold no manifest yet
    let v = bascule_tests::run(&mut s.controller(&["snapshots"]));
    assert!(!text(&v).contains("pg_dump "), "a cancelled export must not be committed:\n{}", text(&v));
}
