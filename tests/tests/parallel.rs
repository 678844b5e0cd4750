//! `restore --jobs N`: tables fetched by their byte range and loaded over N
//! connections into a new database, renamed to the target once complete.
use bascule_tests::{run, text, Scenario};

/// Objects whose restore comes after the data: indexes, constraints, a
/// trigger, a materialized view; and owners, privileges, comments, a
/// sequence's value, an empty table.
const MORE: &str = r#"
CREATE ROLE lecteur;
CREATE INDEX actes_signe ON actes (signe_le);
CREATE INDEX citoyens_nom ON citoyens (lower(nom));
ALTER TABLE actes ADD CONSTRAINT note_bornee CHECK (length(note) < 100000);
CREATE MATERIALIZED VIEW par_commune AS SELECT commune, count(*) AS n FROM citoyens GROUP BY commune;
CREATE FUNCTION touche() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
CREATE TRIGGER avant_maj BEFORE UPDATE ON actes FOR EACH ROW EXECUTE FUNCTION touche();
COMMENT ON TABLE actes IS 'Registre des actes — état civil';
GRANT SELECT ON actes TO lecteur;
ALTER TABLE citoyens OWNER TO lecteur;
SELECT setval('actes_id_seq', 1000000);
CREATE TABLE vide (id int);
CREATE TABLE mesures (d date NOT NULL, v int) PARTITION BY RANGE (d);
CREATE TABLE mesures_2026 PARTITION OF mesures FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
INSERT INTO mesures SELECT date '2026-01-01' + i % 300, i FROM generate_series(1, 5000) i;
"#;

/// `restore --jobs N` of the latest export into database `db`.
fn restore(s: &Scenario, jobs: &str, db: &str) -> std::process::Command {
    let mut c = s.controller(&["restore", "--jobs", jobs]);
    c.arg("--identity").arg(s.path("customer.key")).args(["--target", &s.pg.dsn(db)]);
    c
}

fn leftovers(s: &Scenario) -> String {
    s.pg.psql(
        "postgres",
        r"SELECT string_agg(datname, ',') FROM pg_database WHERE datname LIKE '%\_restore\_%' OR datname LIKE '%\_replaced\_%'",
    )
}

#[test]
fn a_parallel_restore_keeps_every_object_and_leaves_nothing_behind() {
    let s = Scenario::start(3_000);
    s.pg.psql("mairie", MORE);
    assert!(s.snapshot().status.success());
    s.pg.createdb("restored");
    let r = run(&mut restore(&s, "2", "restored"));
    let out = text(&r);
    assert!(r.status.success(), "{out}");
    assert!(out.contains("over 2 connection(s)") && out.contains("pg_restore -j 2"), "the parallel path ran:\n{out}");
    assert!(out.contains("identical to the export"), "{out}");
    assert_eq!(s.pg.schema_with_owners("mairie"), s.pg.schema_with_owners("restored"), "owners, grants, comments, indexes");
    assert_eq!(s.pg.data_fingerprint("mairie"), s.pg.data_fingerprint("restored"));
    for q in [
        "SELECT last_value FROM actes_id_seq",
        "SELECT sum(n) FROM par_commune",
        "SELECT convert_from(lo_get(oid), 'UTF8') FROM pg_largeobject_metadata",
        "SELECT count(*) FROM pg_trigger WHERE tgname = 'avant_maj'",
    ] {
        assert_eq!(s.pg.psql("mairie", q), s.pg.psql("restored", q), "{q}");
    }
    assert_eq!(leftovers(&s), "", "the database restored into took the target's name; the old one was dropped");
    // rows loaded frozen: no page left for the index builds or VACUUM to write again
    s.pg.psql("restored", "CREATE EXTENSION pg_visibility");
    for table in ["actes", "citoyens", "mesures_2026"] {
        let q = format!("SELECT count(*), count(*) FILTER (WHERE all_frozen) FROM pg_visibility_map('{table}')");
        let pages = s.pg.psql("restored", &q);
        let (all, frozen) = pages.split_once('|').unwrap();
        assert!(all.trim().parse::<u64>().unwrap() > 0 && all == frozen, "{table}: pages, frozen pages: {pages}");
    }
}

#[test]
fn a_parallel_restore_that_fails_late_leaves_the_target_as_it_was() {
    let s = Scenario::start(2_000);
    assert!(s.snapshot().status.success());
    // the target holds a table named as the export's primary key: every
    // table loads, then building the index fails
    s.pg.createdb("restored");
    s.pg.psql("restored", "CREATE TABLE actes_pkey (gardee text); INSERT INTO actes_pkey VALUES ('là avant')");
    let r = run(&mut restore(&s, "2", "restored"));
    let out = text(&r);
    assert!(!r.status.success(), "{out}");
    assert!(out.contains("loading") && out.contains("actes_pkey") && out.contains("the target is as it was"), "{out}");
    assert_eq!(
        s.pg.psql("restored", "SELECT string_agg(relname, ',') FROM pg_class WHERE relnamespace = 'public'::regnamespace"),
        "actes_pkey",
        "nothing restored reached the target"
    );
    assert_eq!(s.pg.psql("restored", "SELECT gardee FROM actes_pkey"), "là avant");
    assert_eq!(leftovers(&s), "", "the database restored into was dropped");
}

#[test]
fn with_a_session_on_the_target_the_restore_runs_as_one_stream_and_says_why() {
    let s = Scenario::start(1_000);
    assert!(s.snapshot().status.success());
    s.pg.createdb("restored");
    let mut session = std::process::Command::new(s.pg.tool("psql"))
        .args(["-X", "-q", "-d", &s.pg.dsn("restored"), "-c", "SELECT pg_sleep(120)"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // wait until it is connected
    for _ in 0..100 {
        if s.pg.psql("postgres", "SELECT count(*) FROM pg_stat_activity WHERE datname = 'restored'") != "0" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let r = run(s.controller(&["restore"]).arg("--identity").arg(s.path("customer.key")).args(["--target", &s.pg.dsn("restored")]));
    let _ = session.kill();
    let _ = session.wait();
    let out = text(&r);
    assert!(r.status.success(), "{out}");
    assert!(out.contains("one stream") && out.contains("1 other session(s) are connected to restored"), "{out}");
    assert_eq!(s.pg.data_fingerprint("mairie"), s.pg.data_fingerprint("restored"));
}

#[test]
fn rows_written_in_the_target_during_a_parallel_restore_are_kept_under_another_name() {
    use std::io::BufRead;
    let s = Scenario::start(30_000);
    assert!(s.snapshot().status.success());
    s.pg.createdb("restored");
    s.pg.psql("restored", "CREATE TABLE journal_appli (ligne text)");
    let mut restoring =
        restore(&s, "2", "restored").stderr(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let mut said = String::new();
    let mut lines = std::io::BufReader::new(restoring.stderr.take().unwrap()).lines();
    // an application writes in the target while the rows load, then disconnects
    for line in lines.by_ref() {
        let line = line.unwrap();
        said.push_str(&line);
        said.push('\n');
        if line.contains("loading") {
            s.pg.psql("restored", "INSERT INTO journal_appli VALUES ('écrit pendant la restauration')");
            break;
        }
    }
    for line in lines {
        said.push_str(&line.unwrap());
        said.push('\n');
    }
    let status = restoring.wait().unwrap();
    assert!(status.success(), "{said}");
    assert!(said.contains("were written in restored while it was being restored"), "{said}");
    let kept = leftovers(&s);
    assert!(kept.starts_with("restored_replaced_"), "the old target is kept: {kept:?}");
    assert_eq!(s.pg.psql(&kept, "SELECT ligne FROM journal_appli"), "écrit pendant la restauration");
    assert_eq!(s.pg.data_fingerprint("mairie"), {
        // the restored target holds the export, plus the application's (empty) table of before
        s.pg.psql("restored", "DROP TABLE journal_appli");
        s.pg.data_fingerprint("restored")
    });
}

#[test]
fn a_restore_killed_outright_leaves_a_database_the_next_one_drops() {
    use std::io::BufRead;
    let s = Scenario::start(30_000);
    assert!(s.snapshot().status.success());
    s.pg.createdb("restored");
    // a restore into the same target running meanwhile (its session holds
    // the lock on its database's name): the next restore leaves it alone
    let running = "restored_restore_0123abcd";
    s.pg.createdb(running);
    let mut holder = std::process::Command::new(s.pg.tool("psql"))
        .args(["-X", "-q", "-d", &s.pg.dsn("postgres"), "-c"])
        .arg(format!("SELECT pg_advisory_lock(hashtextextended('{running}', 0)), pg_sleep(600)"))
        .spawn()
        .unwrap();
    // SIGKILLed while its rows load: no guard runs, its database stays
    let mut restoring =
        restore(&s, "2", "restored").stderr(std::process::Stdio::piped()).stdout(std::process::Stdio::null()).spawn().unwrap();
    let mut said = String::new();
    for line in std::io::BufReader::new(restoring.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        said.push_str(&line);
        said.push('\n');
        if line.contains("loading") {
            restoring.kill().unwrap();
            break;
        }
    }
    restoring.wait().unwrap();
    let left: Vec<String> = leftovers(&s).split(',').filter(|n| *n != running).map(str::to_string).collect();
    assert_eq!(left.len(), 1, "the killed restore left its database: {left:?}\n{said}");
    assert!(left[0].starts_with("restored_restore_"), "{left:?}");
    assert_eq!(
        s.pg.psql("restored", "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace"),
        "0",
        "the target is as it was"
    );

    let r = run(&mut restore(&s, "2", "restored"));
    let out = text(&r);
    assert!(r.status.success(), "{out}");
    assert!(out.contains(&format!("dropped {}", left[0])), "the next restore said what it dropped:\n{out}");
    assert_eq!(s.pg.data_fingerprint("mairie"), s.pg.data_fingerprint("restored"));
    assert_eq!(leftovers(&s), running, "the database of the restore still running is kept, the killed one's dropped");
    holder.kill().unwrap();
    holder.wait().unwrap();
}
