//! The agent's peak memory as the stream grows: a `command` source writing
//! a synthetic stream (`seq`: every chunk distinct, compressible like a
//! dump, so that the providers hold little) of 2 GiB then 20 GiB, exported
//! twice each to the two Garage providers: the first night sends every
//! chunk, the second finds every chunk in the chunk table on disk. Peak RSS
//! by GNU time. Run it with `./scripts/bench.sh memory [GIB…]` (default 2
//! 20); `BASCULE_BENCH_AGENT=path` measures another build of the agent.
use std::path::{Path, PathBuf};

use bascule_tests::bench::{field, fresh_tenant_config, timed_rss};
use bascule_tests::{bin, Scenario};

struct Night {
    rss_kib: u64,
    secs: f64,
    source_bytes: u64,
    chunks: u64,
    new_bytes: u64,
}

fn export(agent: &Path, cfg: &Path, what: &str) -> Night {
    let args = [agent.as_os_str(), "snapshot".as_ref(), "--job".as_ref(), "nightly".as_ref(), "--config".as_ref(), cfg.as_os_str()];
    let (t, rss_kib, out) = timed_rss(what, &args);
    Night {
        rss_kib,
        secs: t.as_secs_f64(),
        source_bytes: field(&out, "source_bytes"),
        chunks: field(&out, "chunks"),
        new_bytes: field(&out, "new_bytes"),
    }
}

fn main() {
    let mut sizes: Vec<u64> = std::env::args().skip(1).map(|a| a.parse().expect("sizes in GiB")).collect();
    if sizes.is_empty() {
        sizes = vec![2, 20];
    }
    let agent = std::env::var_os("BASCULE_BENCH_AGENT").map(PathBuf::from).unwrap_or_else(|| bin("bascule-agent"));
    let s = Scenario::start(100);
    let yaml = std::fs::read_to_string(s.path("agent.yaml")).unwrap();
    let (job_at, wal_at) = (yaml.find("    source:\n").expect("a job source"), yaml.find("wal:").unwrap_or(yaml.len()));
    let mut rows = Vec::new();
    for &size in &sizes {
        let bytes = size << 30;
        let stream = format!("seq 1 {} | head -c {bytes}", bytes / 6);
        let source = format!("    source:\n      type: command\n      command: [\"sh\", \"-c\", \"{stream}\"]\n");
        std::fs::write(s.path("agent.yaml"), format!("{}{source}{}", &yaml[..job_at], &yaml[wal_at..])).unwrap();
        let cfg = fresh_tenant_config(&s, &format!("memory-{size}"));
        let first = export(&agent, &cfg, &format!("first export, {size} GiB (every chunk new)"));
        assert_eq!(first.source_bytes, bytes, "the stream's length");
        let second = export(&agent, &cfg, &format!("second export, {size} GiB (every chunk known)"));
        assert!(second.new_bytes * 100 < first.new_bytes, "the second night sent {} of {} bytes again", second.new_bytes, first.new_bytes);
        rows.push((size, first, second));
    }
    println!("\nagent: {}", agent.display());
    println!("| stream | night | chunks | time | agent peak RSS | target |");
    println!("|---|---|---|---|---|---|");
    for (size, first, second) in &rows {
        let target = if *size <= 2 { "< 64 MiB" } else { "< 100 MiB" };
        for (night, n) in [("first (all new)", first), ("second (all known)", second)] {
            println!("| {size} GiB | {night} | {} | {:.1} s | {:.1} MiB | {target} |", n.chunks, n.secs, n.rss_kib as f64 / 1024.0);
        }
    }
    let peak = |i: usize| rows[i].1.rss_kib.max(rows[i].2.rss_kib) as f64;
    if rows.len() > 1 {
        let last = rows.len() - 1;
        println!("| growth | {} GiB over {} GiB | | | {:.2}× | flat |", rows[last].0, rows[0].0, peak(last) / peak(0));
    }
}
