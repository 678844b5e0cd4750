//! The spine's benchmark: bascule against the pipeline a user would script
//! instead, on the same database, in the same run (this machine is shared and
//! noisy, so only ratios mean something). Run it with `./scripts/bench.sh`.
//!
//! Prints: export throughput vs `pg_dump | zstd -T2 | age | rclone rcat` to
//! the same two Garage buckets; restore time vs `age -d | zstd -d | pg_restore`
//! from a local file; the agent's peak RSS at two database sizes; bytes sent
//! the second night vs what `restic backup --stdin` adds for the same dumps.
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bascule_tests::bench::{du, field, fresh_tenant_config, median, restore_phase, scripted_upload, timed, timed_rss, REPS};
use bascule_tests::{bin, ok, run, text, Scenario};

/// What one run measured.
#[derive(Default)]
struct Figures {
    scale: u32,
    dump_bytes: u64,
    small_bytes: u64,
    rss_big: u64,
    rss_small: u64,
    t_export: Duration,
    t_base_export: Duration,
    t_restore: Duration,
    t_check: Duration,
    t_base_restore: Duration,
    first_new: u64,
    restic_first: u64,
    second_new: u64,
    second_index: u64,
    restic_added: u64,
    third_new: u64,
    third_index: u64,
    restic_added3: u64,
}

fn main() {
    let scale: u32 = std::env::args().nth(1).map(|a| a.parse().expect("scale")).unwrap_or(50);
    let s = Scenario::start(100_000);
    let mut f = Figures { scale, ..Default::default() };
    export(&s, &mut f);
    restore(&s, &mut f);
    nights(&s, &mut f);
    print_table(&f);
}

/// Peak RSS at a fifth of the size, then the export against the scripted pipeline.
fn export(s: &Scenario, f: &mut Figures) {
    let scale = f.scale;
    let dsn = s.pg.dsn("mairie");
    let agent = bin("bascule-agent");
    let cfg = s.path("agent.yaml");
    // a database a fifth of the size first, for peak RSS at two sizes
    s.pg.createdb("petite");
    ok(Command::new(s.pg.tool("pgbench")).args(["-i", "-q", "-s", &(scale / 5).max(1).to_string(), "-d", &s.pg.dsn("petite")]));
    let small_cfg = s.path("small.yaml");
    let yaml = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &small_cfg,
        yaml.replace("dbname=mairie", "dbname=petite")
            .replace("tenant: mairie-exemple", "tenant: petite")
            .replace("agent-state", "small-state"),
    )
    .unwrap();
    let (_, rss_small, out) = timed_rss(
        "export, small database",
        &[agent.as_os_str(), "snapshot".as_ref(), "--job".as_ref(), "nightly".as_ref(), "--config".as_ref(), small_cfg.as_os_str()],
    );
    (f.rss_small, f.small_bytes) = (rss_small, field(&out, "source_bytes"));

    eprintln!("bench: loading pgbench scale {scale} next to the town-hall tables");
    ok(Command::new(s.pg.tool("pgbench")).args(["-i", "-q", "-s", &scale.to_string(), "-d", &dsn]));
    s.pg.psql("mairie", "VACUUM ANALYZE");

    // export: bascule and the scripted pipeline, interleaved, REPS times each;
    // repetitions after the first go to a fresh tenant, so dedup cannot help them
    let mut t_exports = Vec::new();
    let mut t_bases = Vec::new();
    let (mut rss_big, mut dump_bytes, mut first_new) = (0, 0, 0);
    for i in 0..REPS {
        let cfg_i = if i == 0 { cfg.clone() } else { fresh_tenant_config(s, &format!("rep-{i}")) };
        let (t, rss, out) = timed_rss(
            "bascule export",
            &[agent.as_os_str(), "snapshot".as_ref(), "--job".as_ref(), "nightly".as_ref(), "--config".as_ref(), cfg_i.as_os_str()],
        );
        if i == 0 {
            (rss_big, dump_bytes, first_new) = (rss, field(&out, "source_bytes"), field(&out, "new_bytes"));
        }
        t_exports.push(t);
        let source = format!("{} -Fc -Z0 -d '{dsn}'", s.pg.tool("pg_dump").display());
        t_bases.push(scripted_upload(s, "pg_dump | zstd | age | rclone rcat ×2", &source, &format!("dump{i}.age")));
    }
    (f.t_export, f.t_base_export) = (median(t_exports), median(t_bases));
    (f.rss_big, f.dump_bytes, f.first_new) = (rss_big, dump_bytes, first_new);
}

/// The restore against `age -d | zstd -d | pg_restore` from a local file, interleaved.
fn restore(s: &Scenario, f: &mut Figures) {
    let dsn = s.pg.dsn("mairie");
    let local = s.path("dump.age");
    ok(Command::new("bash").arg("-c").arg(format!(
        "set -o pipefail; {} -Fc -Z0 -d '{dsn}' | zstd -3 -T2 -q | age -r {} > {}",
        s.pg.tool("pg_dump").display(),
        s.recipient,
        local.display()
    )));
    let (mut t_restores, mut t_checks, mut t_base_restores) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..REPS {
        let db = format!("r_bascule_{i}");
        s.pg.createdb(&db);
        let mut c = s.controller(&["restore"]);
        c.arg("--identity").arg(s.path("customer.key")).args(["--target", &s.pg.dsn(&db)]);
        let (t_all, out) = timed("bascule restore", &mut c);
        let t = restore_phase(&out);
        t_restores.push(t);
        t_checks.push(t_all.saturating_sub(t));
        s.pg.psql("postgres", &format!("DROP DATABASE {db}"));
        let db = format!("r_base_{i}");
        s.pg.createdb(&db);
        t_base_restores.push(
            timed(
                "age -d | zstd -d | pg_restore",
                Command::new("bash").arg("-c").arg(format!(
                    "set -o pipefail; age -d -i {} < {} | zstd -d -q | {} --no-owner --exit-on-error --single-transaction -d '{}'",
                    s.path("customer.key").display(),
                    local.display(),
                    s.pg.tool("pg_restore").display(),
                    s.pg.dsn(&db)
                )),
            )
            .0,
        );
        s.pg.psql("postgres", &format!("DROP DATABASE {db}"));
    }
    (f.t_restore, f.t_check, f.t_base_restore) = (median(t_restores), median(t_checks), median(t_base_restores));
}

/// Two more nights, and what restic adds for the same dumps.
fn nights(s: &Scenario, f: &mut Figures) {
    let dsn = s.pg.dsn("mairie");
    let agent = bin("bascule-agent");
    let cfg = s.path("agent.yaml");
    // second night: a day of activity, then bascule and restic on the same two states
    let pg_dump_to = |file: &Path| {
        ok(Command::new("bash").arg("-c").arg(format!(
            "set -o pipefail; {} -Fc -Z0 -d '{dsn}' | cat > {}",
            s.pg.tool("pg_dump").display(),
            file.display()
        )));
    };
    let dump1 = s.path("dump1.pgc");
    pg_dump_to(&dump1); // the data has not changed since the first export
    eprintln!("bench: a day of activity (pgbench transactions, new and updated town-hall rows)");
    ok(Command::new(s.pg.tool("pgbench")).args(["-n", "-c", "2", "-t", "5000", "-d", &dsn]));
    s.pg.psql(
        "mairie",
        "INSERT INTO actes (citoyen, nature, statut, signe_le, note)
           SELECT 1 + g % 100000, 'mariage', 'brouillon', now(), 'Publication des bans' FROM generate_series(1, 2000) g;
         UPDATE actes SET statut = 'validé' WHERE id > (SELECT max(id) - 1000 FROM actes);",
    );
    let o = run(Command::new(&agent).args(["snapshot", "--job", "nightly", "--config"]).arg(&cfg).env("RUST_LOG", "info"));
    assert!(o.status.success(), "second night: {}", text(&o));
    (f.second_new, f.second_index) = (field(&text(&o), "new_bytes"), field(&text(&o), "index_bytes"));
    let dump2 = s.path("dump2.pgc");
    pg_dump_to(&dump2);

    let repo = s.path("restic");
    let restic = |args: &[&str], input: Option<&Path>| {
        let mut c = Command::new("restic");
        c.args(["-q", "-r"]).arg(&repo).args(args).env("RESTIC_PASSWORD", "bench");
        if let Some(i) = input {
            c.stdin(std::fs::File::open(i).unwrap());
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "restic {args:?}: {}", text(&o));
    };
    restic(&["init"], None);
    let empty = du(&repo);
    restic(&["backup", "--stdin", "--stdin-filename", "dump.pgc"], Some(&dump1));
    let before = du(&repo);
    f.restic_first = before - empty;
    restic(&["backup", "--stdin", "--stdin-filename", "dump.pgc"], Some(&dump2));
    f.restic_added = du(&repo) - before;

    // a second day of town-hall activity only (appends, updates of recent rows)
    eprintln!("bench: a day of town-hall activity only");
    s.pg.psql(
        "mairie",
        "INSERT INTO actes (citoyen, nature, statut, signe_le, note)
           SELECT 1 + g % 100000, 'décès', 'brouillon', now(), 'Transcription' FROM generate_series(1, 2000) g;
         UPDATE actes SET statut = 'validé', note = note || ' (validé)' WHERE id > (SELECT max(id) - 1500 FROM actes);
         INSERT INTO citoyens (nom, prenom, commune) SELECT 'Arrivée-' || g, 'Théo', 'Voreppe' FROM generate_series(1, 1000) g;",
    );
    let o = run(Command::new(&agent).args(["snapshot", "--job", "nightly", "--config"]).arg(&cfg).env("RUST_LOG", "info"));
    assert!(o.status.success(), "third night: {}", text(&o));
    (f.third_new, f.third_index) = (field(&text(&o), "new_bytes"), field(&text(&o), "index_bytes"));
    let dump3 = s.path("dump3.pgc");
    pg_dump_to(&dump3);
    let before = du(&repo);
    restic(&["backup", "--stdin", "--stdin-filename", "dump.pgc"], Some(&dump3));
    f.restic_added3 = du(&repo) - before;

    if let Ok(dir) = std::env::var("BASCULE_BENCH_KEEP") {
        // the three nights' dumps, to study chunking offline
        for d in [&dump1, &dump2, &dump3] {
            std::fs::copy(d, Path::new(&dir).join(d.file_name().unwrap())).unwrap();
        }
    }
}

fn print_table(f: &Figures) {
    let Figures {
        scale,
        dump_bytes,
        small_bytes,
        rss_big,
        rss_small,
        t_export,
        t_base_export,
        t_restore,
        t_check,
        t_base_restore,
        first_new,
        restic_first,
        second_new,
        second_index,
        restic_added,
        third_new,
        third_index,
        restic_added3,
    } = *f;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let rate = |d: Duration| mib(dump_bytes) / d.as_secs_f64();
    println!();
    println!(
        "bascule benchmark: pgbench scale {scale} + town-hall tables, dump {:.0} MiB, two Garage providers on loopback",
        mib(dump_bytes)
    );
    println!();
    println!("| measure | bascule | baseline | ratio | target |");
    println!("|---|---|---|---|---|");
    println!(
        "| export to two providers | {:.1} s ({:.1} MiB/s) | {:.1} s ({:.1} MiB/s) `pg_dump -Z0 \\| zstd -3 -T2 \\| age \\| rclone rcat` ×2 | {:.2}× throughput | ≥ 1.0× |",
        t_export.as_secs_f64(),
        rate(t_export),
        t_base_export.as_secs_f64(),
        rate(t_base_export),
        t_base_export.as_secs_f64() / t_export.as_secs_f64()
    );
    println!(
        "| restore (fetch, verify, pg_restore; the row-count check took {:.1} s more) | {:.1} s | {:.1} s `age -d \\| zstd -d \\| pg_restore` from a local file | {:.2}× time | ≤ 1.1× |",
        t_check.as_secs_f64(),
        t_restore.as_secs_f64(),
        t_base_restore.as_secs_f64(),
        t_restore.as_secs_f64() / t_base_restore.as_secs_f64()
    );
    println!(
        "| agent peak RSS | {:.0} MiB (dump {:.0} MiB) | {:.0} MiB (dump {:.0} MiB) | {:.2}× | < 200 MiB, flat |",
        rss_big as f64 / 1024.0,
        mib(dump_bytes),
        rss_small as f64 / 1024.0,
        mib(small_bytes),
        rss_big as f64 / rss_small.max(1) as f64
    );
    println!(
        "| first night, bytes stored | {:.2} MiB | {:.2} MiB by `restic backup --stdin` | {:.2}× | |",
        mib(first_new),
        mib(restic_first),
        first_new as f64 / restic_first.max(1) as f64
    );
    println!(
        "| second night after 10,000 pgbench transactions + town-hall activity | {:.2} MiB ({:.1} % of the first night; sealed index {:.2} MiB) | {:.2} MiB added by restic | {:.2}× | ≤ 0.75× |",
        mib(second_new),
        second_new as f64 * 100.0 / first_new as f64,
        mib(second_index),
        mib(restic_added),
        second_new as f64 / restic_added.max(1) as f64
    );
    println!(
        "| third night after town-hall activity only | {:.2} MiB ({:.1} % of the first night; sealed index {:.2} MiB) | {:.2} MiB added by restic | {:.2}× | ≤ 0.75× |",
        mib(third_new),
        third_new as f64 * 100.0 / first_new as f64,
        mib(third_index),
        mib(restic_added3),
        third_new as f64 / restic_added3.max(1) as f64
    );
}
