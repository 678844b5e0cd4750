//! Export and restore on a realistic database (`dataset::load_mixed`: text
//! with accents, jsonb, bytea, numeric, foreign keys, several indexes per
//! table), against the export's floor (`pg_dump -Fc -Z0 > /dev/null`) and
//! the restores a user would run instead: `age -d | zstd -d | pg_restore`
//! and `pg_restore -j 2` from a local plaintext dump. Interleaved, medians,
//! ratios. Run it with `./scripts/bench.sh mixed [MEGABYTES]` (default 2000, about 1.05 GiB of dump).
//! `BASCULE_BENCH_AGENTS=a:b` compares other builds of the agent's export,
//! interleaved with the first; `BASCULE_BENCH_EXPORT_ONLY=1` stops after the exports.
use std::process::Command;
use std::time::Duration;

use bascule_tests::bench::{field, fresh_tenant_config, machine_cpu, median, restore_phase, timed, timed_rss};
use bascule_tests::{bin, ok, Scenario};

fn reps() -> usize {
    std::env::var("BASCULE_BENCH_REPS").ok().and_then(|r| r.parse().ok()).unwrap_or(3)
}

fn main() {
    let mb: u32 = std::env::args().nth(1).map(|a| a.parse().expect("megabytes")).unwrap_or(2000);
    let s = Scenario::start(1000);
    bascule_tests::dataset::load_mixed(&s.pg, "mixte", mb);
    let yaml = std::fs::read_to_string(s.path("agent.yaml")).unwrap();
    std::fs::write(s.path("agent.yaml"), yaml.replace("dbname=mairie", "dbname=mixte")).unwrap();
    let dsn = s.pg.dsn("mixte");
    let pg_dump = s.pg.tool("pg_dump");
    let agent = bin("bascule-agent");
    let others: Vec<std::path::PathBuf> =
        std::env::var("BASCULE_BENCH_AGENTS").map(|v| v.split(':').filter(|p| !p.is_empty()).map(Into::into).collect()).unwrap_or_default();

    let Exports { t_floor, t_export, t_others, dump_bytes, rss } = exports(&s, &dsn, &agent, &others);
    if std::env::var_os("BASCULE_BENCH_EXPORT_ONLY").is_some() {
        let floor = median(t_floor.clone()).as_secs_f64();
        println!("\n| agent | export | floor | ratio |\n|---|---|---|---|");
        println!(
            "| {} | {:.2} s | {floor:.2} s | {:.3}× |",
            agent.display(),
            median(t_export.clone()).as_secs_f64(),
            median(t_export).as_secs_f64() / floor
        );
        for (other, t) in others.iter().zip(t_others) {
            let t = median(t).as_secs_f64();
            println!("| {} | {t:.2} s | {floor:.2} s | {:.3}× |", other.display(), t / floor);
        }
        return;
    }

    // the baselines' inputs: a plaintext dump, and the same encrypted
    let plain = s.path("mixte.dump");
    let sealed = s.path("mixte.dump.age");
    ok(Command::new(&pg_dump).args(["-Fc", "-Z0", "-f"]).arg(&plain).args(["-d", &dsn]));
    ok(Command::new("bash").arg("-c").arg(format!(
        "set -o pipefail; zstd -3 -T2 -q -c {} | age -r {} > {}",
        plain.display(),
        s.recipient,
        sealed.display()
    )));
    let pg_restore = s.pg.tool("pg_restore");
    let (mut t_restore1, mut t_restore2, mut t_pipeline, mut t_parallel) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // whole-machine CPU-seconds of each run: bascule restore --jobs 2, the pipeline, pg_restore -j 2
    let (mut cpu_bascule, mut cpu_pipeline, mut cpu_parallel) = (Vec::new(), Vec::new(), Vec::new());
    let cpu = |v: &mut Vec<Duration>, from: f64| v.push(Duration::from_secs_f64(machine_cpu() - from));
    for i in 0..reps() {
        for (jobs, times) in [(1, &mut t_restore1), (2, &mut t_restore2)] {
            let db = format!("r_bascule_{jobs}_{i}");
            s.pg.createdb(&db);
            let mut c = s.controller(&["restore", "--jobs", &jobs.to_string()]);
            c.arg("--identity").arg(s.path("customer.key")).args(["--target", &s.pg.dsn(&db)]);
            let c0 = machine_cpu();
            let out = timed(&format!("bascule restore --jobs {jobs}"), &mut c).1;
            if jobs == 2 {
                cpu(&mut cpu_bascule, c0);
            }
            assert!(out.contains(&format!("over {jobs} connection(s)")), "the parallel restore ran:\n{out}");
            if let Some(l) = out.lines().find(|l| l.contains("restored in parallel")) {
                eprintln!("  {l}");
            }
            times.push(restore_phase(&out));
            s.pg.psql("postgres", &format!("DROP DATABASE {db}"));
        }

        let db = format!("r_pipeline_{i}");
        s.pg.createdb(&db);
        let pipeline = format!(
            "set -o pipefail; age -d -i {} < {} | zstd -d -q | {} --exit-on-error --single-transaction -d '{}'",
            s.path("customer.key").display(),
            sealed.display(),
            pg_restore.display(),
            s.pg.dsn(&db)
        );
        let c0 = machine_cpu();
        t_pipeline.push(timed("age -d | zstd -d | pg_restore", Command::new("bash").arg("-c").arg(pipeline)).0);
        cpu(&mut cpu_pipeline, c0);
        s.pg.psql("postgres", &format!("DROP DATABASE {db}"));

        let db = format!("r_parallel_{i}");
        s.pg.createdb(&db);
        let mut c = Command::new(&pg_restore);
        c.args(["-j", "2", "--exit-on-error", "-d", &s.pg.dsn(&db)]).arg(&plain);
        let c0 = machine_cpu();
        t_parallel.push(timed("pg_restore -j 2 from a local plaintext dump", &mut c).0);
        cpu(&mut cpu_parallel, c0);
        s.pg.psql("postgres", &format!("DROP DATABASE {db}"));
    }
    let (floor, export) = (median(t_floor), median(t_export));
    let (restore1, restore2, pipeline, parallel) = (median(t_restore1), median(t_restore2), median(t_pipeline), median(t_parallel));
    let mib = dump_bytes as f64 / (1024.0 * 1024.0);
    println!();
    println!("bascule benchmark, mixed dataset: dump {mib:.0} MiB, two Garage providers on loopback, {} repetitions (medians)", reps());
    println!();
    println!("| measure | bascule | baseline | ratio | target |");
    println!("|---|---|---|---|---|");
    println!(
        "| export to two providers | {:.1} s | {:.1} s `pg_dump -Fc -Z0 > /dev/null` | {:.2}× time | ≤ 1.05× |",
        export.as_secs_f64(),
        floor.as_secs_f64(),
        export.as_secs_f64() / floor.as_secs_f64()
    );
    for (jobs, restore) in [(1, restore1), (2, restore2)] {
        println!(
            "| restore --jobs {jobs} (fetch, verify, load, build) | {:.1} s | {:.1} s `age -d \\| zstd -d \\| pg_restore` | {:.2}× time | {} |",
            restore.as_secs_f64(),
            pipeline.as_secs_f64(),
            restore.as_secs_f64() / pipeline.as_secs_f64(),
            if jobs == 2 { "≤ 0.8×" } else { "" }
        );
        println!(
            "| restore --jobs {jobs} against a parallel one | {:.1} s | {:.1} s `pg_restore -j 2` from a local plaintext dump | {:.2}× time | {} |",
            restore.as_secs_f64(),
            parallel.as_secs_f64(),
            restore.as_secs_f64() / parallel.as_secs_f64(),
            if jobs == 2 { "≤ 1.0×" } else { "" }
        );
    }
    let (cb, cp, cj) = (median(cpu_bascule).as_secs_f64(), median(cpu_pipeline).as_secs_f64(), median(cpu_parallel).as_secs_f64());
    println!("| CPU of a restore, whole machine (bascule, providers, PostgreSQL) | {cb:.1} s (--jobs 2) | {cp:.1} s pipeline, {cj:.1} s `pg_restore -j 2` | {:.2}×, {:.2}× | |", cb / cp, cb / cj);
    println!("| agent peak RSS | {:.0} MiB (dump {mib:.0} MiB) | | | < 64 MiB for 2 GB |", rss as f64 / 1024.0);
}

/// Export times (the floor's, bascule's, other builds'), the dump's size and the agent's peak RSS.
struct Exports {
    t_floor: Vec<Duration>,
    t_export: Vec<Duration>,
    t_others: Vec<Vec<Duration>>,
    dump_bytes: u64,
    rss: u64,
}

fn exports(s: &Scenario, dsn: &str, agent: &std::path::Path, others: &[std::path::PathBuf]) -> Exports {
    let pg_dump = s.pg.tool("pg_dump");
    // the export's floor, and bascule's export, interleaved (each repetition
    // of bascule's to a fresh tenant, so that nothing already sent helps)
    let (mut t_floor, mut t_export) = (Vec::new(), Vec::new());
    let mut t_others: Vec<Vec<Duration>> = vec![Vec::new(); others.len()];
    let (mut dump_bytes, mut rss) = (0, 0);
    for i in 0..reps() {
        let floor = format!("{} -Fc -Z0 -d '{dsn}' > /dev/null", pg_dump.display());
        t_floor.push(timed("pg_dump -Fc -Z0 > /dev/null", Command::new("bash").arg("-c").arg(floor)).0);
        let cfg = if i == 0 { s.path("agent.yaml") } else { fresh_tenant_config(s, &format!("mixte-{i}")) };
        let args = [agent.as_os_str(), "snapshot".as_ref(), "--job".as_ref(), "nightly".as_ref(), "--config".as_ref(), cfg.as_os_str()];
        let (t, r, out) = timed_rss("bascule export", &args);
        if i == 0 {
            (dump_bytes, rss) = (field(&out, "source_bytes"), r);
        }
        t_export.push(t);
        for (k, other) in others.iter().enumerate() {
            let cfg = fresh_tenant_config(s, &format!("mixte-{i}-other-{k}"));
            let args = [other.as_os_str(), "snapshot".as_ref(), "--job".as_ref(), "nightly".as_ref(), "--config".as_ref(), cfg.as_os_str()];
            t_others[k].push(timed_rss(&format!("export by {}", other.display()), &args).0);
        }
    }
    Exports { t_floor, t_export, t_others, dump_bytes, rss }
}
