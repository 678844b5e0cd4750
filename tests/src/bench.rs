//! Helpers shared by the benchmarks (`src/bin/bench*.rs`): timing, medians,
//! peak memory, and the baselines' rclone configuration.
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{ok, run, text, Garage};

pub fn timed(what: &str, cmd: &mut Command) -> (Duration, String) {
    eprintln!("bench: {what}");
    let t0 = Instant::now();
    let o = run(cmd);
    let d = t0.elapsed();
    assert!(o.status.success(), "{what} failed:\n{}", text(&o));
    (d, text(&o))
}

/// Runs `args` under GNU time; returns (wall time, peak RSS in KiB, output).
pub fn timed_rss(what: &str, args: &[&std::ffi::OsStr]) -> (Duration, u64, String) {
    let mut c = Command::new("/usr/bin/time");
    c.arg("-f").arg("BENCH_MAXRSS_KB=%M").args(args).env("RUST_LOG", "info");
    let (d, out) = timed(what, &mut c);
    let rss = out.split_whitespace().find_map(|w| w.strip_prefix("BENCH_MAXRSS_KB=")).and_then(|v| v.parse().ok()).unwrap_or(0);
    (d, rss, out)
}

/// CPU-seconds the whole machine has spent so far (user, system,
/// interrupts; not idle or waiting), from `/proc/stat`: the difference
/// across a run is what it cost every process taking part (bascule, the
/// providers, PostgreSQL), and whatever else ran meanwhile.
pub fn machine_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> = stat.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal
    let busy: f64 = ticks.iter().enumerate().filter(|(i, _)| ![3, 4].contains(i) && *i < 8).map(|(_, v)| v).sum();
    busy / 100.0
}

/// Repetitions of the timed comparisons (medians are reported).
pub const REPS: usize = 3;

pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub fn field(out: &str, name: &str) -> u64 {
    out.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} in:\n{out}"))
        .parse()
        .unwrap()
}

/// The fetch-and-restore time `bascule-controller restore` prints, apart
/// from its row-count check (`… chunks) in 12.3s; …`).
pub fn restore_phase(out: &str) -> Duration {
    out.split("chunks) in ")
        .nth(1)
        .and_then(|r| r.split('s').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(Duration::from_secs_f64)
        .unwrap_or_else(|| panic!("no restore time in:\n{out}"))
}

pub fn du(path: &Path) -> u64 {
    let out = ok(Command::new("du").arg("-sb").arg(path));
    out.split_whitespace().next().unwrap().parse().unwrap()
}

pub fn rclone_env(c: &mut Command, name: &str, g: &Garage) {
    // the baseline gets only its own configuration, like bascule (machines may
    // set AWS_CA_BUNDLE and the like globally)
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") {
            c.env_remove(k);
        }
    }
    let p = format!("RCLONE_CONFIG_{name}_");
    c.env(format!("{p}TYPE"), "s3")
        .env(format!("{p}PROVIDER"), "Other")
        .env(format!("{p}ENDPOINT"), g.endpoint())
        .env(format!("{p}REGION"), "garage")
        .env(format!("{p}ACCESS_KEY_ID"), &g.key_id)
        .env(format!("{p}SECRET_ACCESS_KEY"), &g.secret)
        .env(format!("{p}FORCE_PATH_STYLE"), "true");
}

/// The baseline a user would script: `source | zstd -3 -T2 | age` sent to
/// both buckets with `rclone rcat`; returns its wall time.
pub fn scripted_upload(s: &crate::Scenario, what: &str, source: &str, object: &str) -> Duration {
    let pipeline = format!(
        "set -o pipefail; {source} | zstd -3 -T2 -q | age -r {r} | tee >(rclone rcat GA:{b}/baseline/{object}) | rclone rcat GB:{b}/baseline/{object}",
        r = s.recipient,
        b = s.a.bucket
    );
    let mut c = Command::new("bash");
    c.arg("-c").arg(&pipeline);
    rclone_env(&mut c, "GA", &s.a);
    rclone_env(&mut c, "GB", &s.b);
    timed(what, &mut c).0
}

/// A copy of the agent's config for a new tenant with its own state, so
/// that nothing already stored helps a repeated measurement.
pub fn fresh_tenant_config(s: &crate::Scenario, tag: &str) -> std::path::PathBuf {
    let yaml = std::fs::read_to_string(s.path("agent.yaml")).unwrap();
    let p = s.path(&format!("{tag}.yaml"));
    std::fs::write(
        &p,
        yaml.replace(&format!("tenant: {}", s.tenant), &format!("tenant: {tag}")).replace("agent-state", &format!("{tag}-state")),
    )
    .unwrap();
    p
}
