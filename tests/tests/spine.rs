//! The spine, end to end, against real PostgreSQL and two real Garage servers.
use std::process::Command;
use std::time::{Duration, Instant};

use bascule_tests::{bin, ok, run, text, Scenario};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn export_verify_restore_is_identical() {
    let s = Scenario::start(20_000);
    // names to quote, a newline, a tab and a backslash in values, an empty
    // table, a partitioned table: the row counts are read in the dump's stream
    s.pg.psql(
        "mairie",
        r#"CREATE SCHEMA "état civil";
           CREATE TABLE "état civil"."Registre des décès" (id int, texte text);
           INSERT INTO "état civil"."Registre des décès" VALUES (1, E'ligne 1\nligne 2\\fin\ttab'), (2, NULL);
           CREATE TABLE vide (x int);
           CREATE TABLE mesures (jour date, v int) PARTITION BY RANGE (jour);
           CREATE TABLE mesures_2025 PARTITION OF mesures FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
           CREATE TABLE mesures_2026 PARTITION OF mesures FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
           INSERT INTO mesures SELECT date '2025-06-01' + g, g FROM generate_series(1, 400) g;"#,
    );
    let expected = s.pg.psql(
        "mairie",
        "SELECT format('%s table(s), %s row(s)', count(*) + 1, sum((xpath('/row/n/text()', query_to_xml(format('SELECT count(*) AS n FROM ONLY %I.%I', n.nspname, c.relname), false, true, '')))[1]::text::bigint) + (SELECT count(*) FROM pg_largeobject_metadata))
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'",
    );
    let out = s.snapshot();
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("Cannot count rows in the dump's stream"), "{}", text(&out));
    let name = Scenario::snapshot_name(&out);

    let list = ok(&mut s.controller(&["snapshots"]));
    assert!(list.contains(&name) && list.contains("provider-a:yes provider-b:yes"), "{list}");
    let v = run(&mut s.controller(&["verify", "--read-data"]));
    assert!(v.status.success(), "{}", text(&v));
    assert!(text(&v).contains(": OK"), "{}", text(&v));
    // what each bucket protects, asked of Garage itself (signed bucket requests)
    // (Garage: no versioning, and no object lock API)
    for p in ["provider-a", "provider-b"] {
        let line = format!("bucket of {p}: versioning never enabled; object lock unknown (HTTP 501 NotImplemented)");
        assert!(text(&v).contains(&line), "{}", text(&v));
    }

    let r = s.assert_restores_identically("restored");
    assert!(text(&r).contains(&format!("row counts: {expected}: identical to the export")), "{expected}:\n{}", text(&r));
    assert_eq!(s.pg.schema("mairie"), s.pg.schema("restored"), "restored schema differs");
    assert_eq!(
        s.pg.psql("restored", "SELECT convert_from(lo_get(oid), 'UTF8') FROM pg_largeobject_metadata"),
        "registre d'état civil scanné — 1892"
    );
    assert_eq!(s.pg.psql("restored", "SELECT nom_complet(c) FROM citoyens c WHERE id = 1"), "Zoé 1 Lefèvre-1");
}

#[test]
fn stock_tools_rebuild_the_export_without_bascule() {
    let s = Scenario::start(2_000);
    assert!(s.snapshot().status.success());
    // a copy of provider A's directory for this tenant
    let a = s.provider(&s.a);
    let rt = rt();
    let copy = s.path("copy");
    let mut name = None;
    for (key, _) in rt.block_on(a.list("")).unwrap() {
        let p = copy.join(&key);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, rt.block_on(a.get(&key, u64::MAX)).unwrap().unwrap()).unwrap();
        if let Some(n) = bascule_core::layout::manifest_name(&key) {
            name = Some(n.to_string());
        }
    }
    let need = |tool: &str| {
        bascule_tests::which(tool, &[])
            .unwrap_or_else(|| panic!("the `{tool}` CLI is needed: apt-get install {tool} (the README's test command does)"))
    };
    for tool in ["age", "zstd", "jq"] {
        need(tool);
    }
    // exactly the README's recipe
    let script = format!(
        r#"set -eu
N={name}
sed '1,/^$/d' snapshots/$N.manifest > manifest.json
age -d -i {key} < snapshots/$N.index | zstd -d > index.json
jq -r --slurpfile m manifest.json '.segments as $s | .extents[] | $s[.segment] as $g |
  "\($m[0].objects[$g.pack].key) \($g.at) \($g.len) \(.offset) \(.lens | add)"' index.json |
  while read -r pack at seg off n; do
    tail -c +$((at + 1)) "$pack" | head -c "$seg" | age -d -i {key} | zstd -d | tail -c +$((off + 1)) | head -c "$n"
  done > dump.pgc
"#,
        name = name.expect("a manifest"),
        key = s.path("customer.key").display()
    );
    let o = run(std::process::Command::new("sh").arg("-c").arg(&script).current_dir(&copy));
    assert!(o.status.success(), "{}", text(&o));
    s.pg.createdb("by_hand");
    ok(std::process::Command::new(s.pg.tool("pg_restore"))
        .args(["--no-owner", "--exit-on-error", "-d", &s.pg.dsn("by_hand")])
        .arg(copy.join("dump.pgc")));
    assert_eq!(s.pg.data_fingerprint("mairie"), s.pg.data_fingerprint("by_hand"));
}

#[test]
fn second_night_uploads_only_what_changed() {
    let s = Scenario::start(60_000);
    let first = s.snapshot();
    assert!(first.status.success(), "{}", text(&first));
    // a day at the town hall: ~1 % new rows, updates of recent rows
    s.pg.psql(
        "mairie",
        "INSERT INTO actes (citoyen, nature, statut, signe_le, note)
           SELECT 1 + g % 60000, 'mariage', 'brouillon', now(), 'Publication des bans à la mairie'
           FROM generate_series(1, 1200) g;
         UPDATE actes SET statut = 'validé' WHERE id > (SELECT max(id) - 600 FROM actes);
         INSERT INTO citoyens (nom, prenom, commune) SELECT 'Nouveau-' || g, 'Léa', 'Voiron' FROM generate_series(1, 600) g;",
    );
    let second = s.snapshot();
    assert!(second.status.success(), "{}", text(&second));
    let (n1, n2) = (Scenario::new_bytes(&first), Scenario::new_bytes(&second));
    eprintln!("first night {n1} bytes, second night {n2} bytes ({:.1} %)", n2 as f64 * 100.0 / n1 as f64);
    assert!(n2 * 4 < n1, "second night sent {n2} bytes, not far fewer than the first night's {n1}");
    // and the second snapshot restores to exactly the new state
    s.assert_restores_identically("restored");
}

#[test]
fn provider_down_during_export_then_backlog_replayed() {
    let mut s = Scenario::start(40_000);
    // a thin uplink, so the export is still running when provider B dies
    s.write_configs("  max_bandwidth: 1MiB\n  pack_size: 256KiB\n");
    let mut child = s.agent(&["snapshot", "--job", "nightly"]).stderr(std::process::Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(child.try_wait().unwrap().is_none(), "the export finished before the fault was injected; slow it down");
    s.b.stop();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "degraded exit expected:\n{}", text(&out));
    assert!(text(&out).contains("degraded"), "{}", text(&out));
    let backlog = std::fs::read_to_string(s.path("agent-state/backlog.json")).expect("a durable backlog");
    assert!(backlog.contains("provider-b"), "{backlog}");
    // the controller sees the gap
    let v = run(&mut s.controller(&["verify"]));
    assert!(!v.status.success());

    s.b.restart();
    s.write_configs("");
    let sync = run(&mut s.agent(&["sync"]));
    assert!(sync.status.success(), "{}", text(&sync));
    assert!(!s.path("agent-state/backlog.json").exists(), "backlog cleared after a complete sync");
    let v = run(&mut s.controller(&["verify", "--read-data"]));
    assert!(v.status.success(), "verify after replay:\n{}", text(&v));
    s.assert_restores_identically("restored");
}

#[test]
fn killed_export_is_resumed_and_restores_identically() {
    let s = Scenario::start(40_000);
    s.write_configs("  max_bandwidth: 1MiB\n  pack_size: 256KiB\n");
    let mut child = s.agent(&["snapshot", "--job", "nightly"]).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(2000));
    assert!(child.try_wait().unwrap().is_none(), "export ended before SIGKILL");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let a = s.provider(&s.a);
    let sent = rt().block_on(a.list("packs/")).unwrap().len();
    assert!(sent > 0, "some packs arrived before the kill");
    assert!(rt().block_on(a.list("snapshots/")).unwrap().is_empty(), "no manifest may exist for a killed export");

    s.write_configs("");
    let t0 = Instant::now();
    let out = s.snapshot();
    assert!(out.status.success(), "{}", text(&out));
    eprintln!("resumed in {:?}", t0.elapsed());
    // the packs that arrived before the kill are reused, not sent again
    let stored: u64 = Scenario::log_field(&out, "stored_bytes").parse().unwrap();
    let new = Scenario::new_bytes(&out);
    assert!(new < stored, "the re-run sent {new} of {stored} bytes: nothing from the killed run was reused");
    s.assert_restores_identically("restored");
}

#[test]
fn a_damaged_chunk_table_cannot_pass_for_the_data() {
    // The agent trusts its local chunk table to say where yesterday's chunks
    // lie. Damage it (every chunk said to start at byte 0 of its segment):
    // the next export references wrong bytes without knowing it, and the
    // restore must refuse it rather than load them.
    let s = Scenario::start(20_000);
    let first = s.snapshot();
    assert!(first.status.success(), "{}", text(&first));
    let table = std::fs::read_dir(s.path("agent-state"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "chunks"))
        .expect("the agent's chunk table");
    // "BSCHNK01", the header's length, the header, then records of 24
    // bytes: id (16), segment (4), offset in the segment (4)
    let mut damaged = std::fs::read(&table).unwrap();
    assert_eq!(&damaged[..8], b"BSCHNK01", "a chunk table of this format");
    let records_at = 16 + u64::from_le_bytes(damaged[8..16].try_into().unwrap()) as usize;
    assert_eq!((damaged.len() - records_at) % 24, 0, "whole records");
    let mut moved = 0;
    for r in damaged[records_at..].chunks_exact_mut(24) {
        if r[20..24] != [0; 4] {
            r[20..24].copy_from_slice(&[0; 4]);
            moved += 1;
        }
    }
    assert!(moved > 0, "the table lists chunks past the start of a segment");
    std::fs::write(&table, damaged).unwrap();

    let second = s.snapshot();
    assert!(second.status.success(), "{}", text(&second));
    assert!(Scenario::new_bytes(&second) * 10 < Scenario::new_bytes(&first), "the second export reused the (damaged) table");

    // written to a file: refused at the end of the stream, nothing left behind
    let out = s.path("latest.pgc");
    let r = run(s.controller(&["restore", "--snapshot", "latest"]).arg("--output").arg(&out).arg("--identity").arg(s.path("customer.key")));
    assert!(!r.status.success(), "wrong bytes were written out");
    assert!(text(&r).contains("stream hash") && text(&r).contains("not what was exported"), "{}", text(&r));
    assert!(!out.exists() && !s.path("latest.pgc.partial").exists(), "a file of wrong bytes was left behind");
    // into PostgreSQL: pg_restore may choke on the wrong bytes first; either
    // way the restore fails and commits nothing
    let r = s.restore("latest", "from_damaged", &s.path("customer.key"));
    assert!(!r.status.success(), "a restore of wrong bytes succeeded");
    assert_eq!(
        s.pg.psql("from_damaged", "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"),
        "0",
        "pg_restore committed part of a stream that failed its check"
    );

    // the first export, made before the damage, still restores exactly, and
    // --output writes it as a pg_dump file pg_restore reads
    let name = Scenario::snapshot_name(&first);
    let r = s.restore(&name, "from_first", &s.path("customer.key"));
    assert!(r.status.success(), "{}", text(&r));
    assert_eq!(s.pg.data_fingerprint("mairie"), s.pg.data_fingerprint("from_first"));
    let out = s.path("first.pgc");
    let r = run(s.controller(&["restore", "--snapshot", &name]).arg("--output").arg(&out).arg("--identity").arg(s.path("customer.key")));
    assert!(r.status.success() && text(&r).contains("stream hash verified"), "{}", text(&r));
    let source_bytes: u64 = Scenario::log_field(&first, "source_bytes").parse().unwrap();
    assert_eq!(std::fs::metadata(&out).unwrap().len(), source_bytes);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600, "a plaintext dump readable by others");
    let listed = run(std::process::Command::new(s.pg.tool("pg_restore")).arg("-l").arg(&out));
    assert!(listed.status.success() && text(&listed).contains("TABLE DATA public citoyens"), "{}", text(&listed));
    // and never over an existing file
    let r = run(s.controller(&["restore", "--snapshot", &name]).arg("--output").arg(&out).arg("--identity").arg(s.path("customer.key")));
    assert!(!r.status.success() && text(&r).contains("refusing to overwrite"), "{}", text(&r));
}

#[test]
fn flipped_byte_on_one_provider_is_detected_and_bypassed() {
    let s = Scenario::start(10_000);
    assert!(s.snapshot().status.success());
    let a = s.provider(&s.a);
    let rt = rt();
    let (key, _) = rt.block_on(a.list("packs/")).unwrap().into_iter().next().unwrap();
    let mut bytes = rt.block_on(a.get(&key, u64::MAX)).unwrap().unwrap().to_vec();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    rt.block_on(a.put(&key, bytes.into())).unwrap();

    let v = run(&mut s.controller(&["verify", "--read-data"]));
    assert!(!v.status.success());
    let report = text(&v);
    assert!(report.contains(&format!("provider provider-a: {key}")) && report.contains("hash mismatch"), "{report}");
    assert!(!report.contains("provider provider-b:"), "provider B is clean:\n{report}");

    s.assert_restores_identically("restored"); // served by B where A's copy is bad
}

#[test]
fn forged_objects_are_refused_before_use() {
    let s = Scenario::start(5_000);
    assert!(s.snapshot().status.success());
    let rt = rt();
    let (a, b) = (s.provider(&s.a), s.provider(&s.b));
    // a pack replaced by a valid age ciphertext of other data, to the
    // customer's own recipient, on both providers
    let (key, _) = rt.block_on(a.list("packs/")).unwrap().into_iter().next().unwrap();
    let recipient: bascule_core::keys::Recipient = s.recipient.parse().unwrap();
    let forged = bascule_core::seal::seal(b"DROP TABLE citoyens;", &[recipient]).unwrap();
    rt.block_on(a.put(&key, forged.clone().into())).unwrap();
    rt.block_on(b.put(&key, forged.into())).unwrap();
    let r = s.restore("latest", "restored", &s.path("customer.key"));
    assert!(!r.status.success());
    assert!(text(&r).contains(&key) && text(&r).contains("damaged or forged"), "{}", text(&r));
    assert_eq!(
        s.pg.psql("restored", "SELECT count(*) FROM pg_tables WHERE tablename = 'citoyens'"),
        "0",
        "nothing of the forged data may reach the database"
    );

    let v = run(&mut s.controller(&["verify", "--read-data"]));
    assert!(text(&v).contains(&format!("provider provider-a: {key}: length")), "{}", text(&v));

    // a manifest signed by another key is refused too
    let other = bascule_core::keys::AgentKey::generate();
    let mkey = rt.block_on(a.list("snapshots/")).unwrap().into_keys().find(|k| k.ends_with(".manifest")).unwrap();
    let orig = rt.block_on(a.get(&mkey, u64::MAX)).unwrap().unwrap();
    let body_at = orig.windows(2).position(|w| w == b"\n\n").unwrap() + 2;
    let body: serde_json::Value = serde_json::from_slice(&orig[body_at..]).unwrap();
    let resigned = bascule_core::signed::sign(bascule_core::signed::Kind::Manifest, &body, &other);
    rt.block_on(a.put(&mkey, resigned.clone().into())).unwrap();
    rt.block_on(b.put(&mkey, resigned.into())).unwrap();
    let v = run(&mut s.controller(&["verify"]));
    assert!(!v.status.success());
    assert!(text(&v).contains("signature does not verify"), "{}", text(&v));
}

#[test]
fn wrong_identity_names_the_recipients() {
    let s = Scenario::start(1_000);
    assert!(s.snapshot().status.success());
    let stranger = s.path("stranger.key");
    ok(std::process::Command::new(bin("bascule-agent")).arg("new-identity").arg("--out").arg(&stranger));
    let r = s.restore("latest", "restored", &stranger);
    assert!(!r.status.success());
    assert!(text(&r).contains(&s.recipient), "the error must name the recipient the data was sealed to:\n{}", text(&r));
}

#[test]
fn provider_rollback_is_refused() {
    let s = Scenario::start(1_000);
    assert!(s.snapshot().status.success());
    let rt = rt();
    let a = s.provider(&s.a);
    let old_head = rt.block_on(a.get("HEAD", u64::MAX)).unwrap().unwrap();
    assert!(run(&mut s.controller(&["verify"])).status.success());
    assert!(s.snapshot().status.success());
    assert!(run(&mut s.controller(&["verify"])).status.success());
    // provider A serves yesterday's HEAD, validly signed
    rt.block_on(a.put("HEAD", old_head)).unwrap();
    let v = run(&mut s.controller(&["verify"]));
    assert!(!v.status.success());
    assert!(text(&v).contains("rollback"), "{}", text(&v));
}

#[test]
fn rows_are_counted_with_sql_when_the_dump_cannot_be_read() {
    let s = Scenario::start(2_000);
    // a pg_dump that compresses its archive all the same (its last --compress wins)
    let wrapper = s.path("pg_dump-compressing");
    let real = s.pg.tool("pg_dump");
    std::fs::write(&wrapper, format!("#!/bin/sh\nexec {} \"$@\" --compress=1\n", real.display())).unwrap();
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    bascule_tests::edit(&s.path("agent.yaml"), &format!("pg_dump: {}", real.display()), &format!("pg_dump: {}", wrapper.display()));
    let out = s.snapshot();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("Cannot count rows in the dump's stream") && text(&out).contains("a compressed archive"), "{}", text(&out));
    let r = s.assert_restores_identically("restored");
    assert!(text(&r).contains("row counts: 3 table(s), 6001 row(s): identical to the export"), "{}", text(&r));
}

#[test]
fn after_a_key_rotation_sync_catches_up_with_what_the_old_key_signed() {
    let mut s = Scenario::start(300);
    // provider B is down while the old key signs a snapshot
    s.b.stop();
    let o = s.snapshot();
    assert_eq!(o.status.code(), Some(3), "degraded:\n{}", text(&o));
    let old_snapshot = Scenario::snapshot_name(&o);
    s.b.restart();

    // the documented rotation: a new key, the old one revoked from now
    let old_key = s.verify_key.clone();
    let new_key = ok(Command::new(bin("bascule-agent")).arg("keygen").arg("--out").arg(s.path("new.key"))).trim().to_string();
    // a whole second after every object the old key signed (the old snapshot may have started this second)
    let revoked_at = (chrono::Utc::now() + chrono::Duration::seconds(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    std::thread::sleep(Duration::from_millis(1100));
    let agent_yaml = std::fs::read_to_string(s.path("agent.yaml")).unwrap();
    let rotated = agent_yaml.replace(&s.path("agent.key").display().to_string(), &s.path("new.key").display().to_string());
    std::fs::write(s.path("agent.yaml"), &rotated).unwrap();
    let ctl = std::fs::read_to_string(s.path("controller.yaml")).unwrap().replace(
        &format!("verify_keys: [\"{old_key}\"]"),
        &format!("verify_keys: [{{ key: \"{old_key}\", revoked_at: {revoked_at} }}, {{ key: \"{new_key}\", valid_from: {revoked_at} }}]"),
    );
    std::fs::write(s.path("controller.yaml"), ctl).unwrap();
    if bascule_tests::is_root() {
        ok(Command::new("chown").args(["-R", "postgres"]).arg(s.dir.path()));
    }

    // without the old key among the agent's previous keys, its snapshot cannot be vouched for
    let sync = run(&mut s.agent(&["sync"]));
    assert_eq!(sync.status.code(), Some(3), "{}", text(&sync));
    assert!(text(&sync).contains(&format!("SKIPPED snapshots/{old_snapshot}.manifest")), "{}", text(&sync));
    assert!(text(&sync).contains(&format!("INCOMPLETE provider-b: still lacks {old_snapshot}")), "{}", text(&sync));
    assert!(s.path("agent-state/backlog.json").exists(), "the backlog is kept while B lacks a snapshot");

    // with it (valid until its revocation), catch-up works
    std::fs::write(s.path("agent.yaml"), format!("{rotated}previous_keys:\n  - {{ key: \"{old_key}\", revoked_at: {revoked_at} }}\n"))
        .unwrap();
    let sync = run(&mut s.agent(&["sync"]));
    assert!(sync.status.success(), "{}", text(&sync));
    assert!(!s.path("agent-state/backlog.json").exists(), "backlog cleared after a complete sync");
    let o = s.snapshot();
    assert!(o.status.success(), "the new key signs the next snapshot:\n{}", text(&o));
    let v = run(&mut s.controller(&["verify", "--read-data"]));
    assert!(v.status.success(), "both snapshots on both providers, each under its key:\n{}", text(&v));
    s.b.stop();
    let r = s.restore(&old_snapshot, "old_from_a", &s.path("customer.key"));
    assert!(r.status.success(), "{}", text(&r));
    s.b.restart();
    s.a.stop();
    let r = s.restore(&old_snapshot, "old_from_b", &s.path("customer.key"));
    assert!(r.status.success(), "the old snapshot restores from B, where sync put it:\n{}", text(&r));
}
