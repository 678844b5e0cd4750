//! Golden invalid objects (`tests/data/invalid/`, one file each, in the
//! manner of rage's testkit): each names what it is, how it is opened, and
//! the error it must be refused with. They are files, not code, so that a
//! change of the format that starts accepting one of them fails here.
//!
//! A file is a header, a line `---`, then the object's bytes:
//! ```text
//! # what the object is and why it must be refused
//! kind: head | manifest | wal | restore-test | report | condemned | index
//! tenant: mairie
//! key: HEAD
//! trust: valid | revoked <time>
//! expect: BadSignature
//! ---
//! <bytes>
//! ```
//! The objects are signed with `tests/data/keys/agent.key` and sealed to
//! `tests/data/keys/customer.key` (test keys, nothing else uses them).
//! `BASCULE_REGENERATE_GOLDEN=1` writes the files anew from the cases below
//! (then review and commit them).
use std::path::{Path, PathBuf};

use bascule_controller::drill::report::Report;
use bascule_core::condemned::Condemned;
use bascule_core::head::Head;
use bascule_core::keys::{AgentKey, Identities, TrustedKey};
use bascule_core::manifest::{Index, Manifest};
use bascule_core::restore_test::RestoreTestResult;
use bascule_core::signed::{self, Kind, Signed};
use bascule_core::wal::{WalName, WalRecord};
use chrono::{DateTime, Utc};

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data")
}

fn agent_key() -> AgentKey {
    // a repository file's mode is 0644: read its text, not the file as a key file
    let p = data().join("keys/agent.key");
    AgentKey::parse(&std::fs::read_to_string(&p).unwrap(), &p).expect("tests/data/keys/agent.key")
}

fn customer() -> Identities {
    Identities::parse(&std::fs::read_to_string(data().join("keys/customer.key")).unwrap()).expect("tests/data/keys/customer.key")
}

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

/// Opens `bytes` as the header says; the error's variant name (or `accepted`).
fn refusal(kind: &str, tenant: &str, key: &str, trust: &[TrustedKey], bytes: &[u8]) -> String {
    let name = |e: bascule_core::Error| format!("{e:?}").split([' ', '(', '{']).next().unwrap_or_default().to_string();
    let result = match kind {
        "head" => Head::open(bytes, trust, tenant, key).map(|_| ()),
        "manifest" => <Manifest as Signed>::open(bytes, trust, tenant, key).map(|_| ()),
        "wal" => <WalRecord as Signed>::open(bytes, trust, tenant, key).map(|_| ()),
        "restore-test" => <RestoreTestResult as Signed>::open(bytes, trust, tenant, key).map(|_| ()),
        "report" => <Report as Signed>::open(bytes, trust, tenant, key).map(|_| ()),
        "condemned" => <Condemned as Signed>::open(bytes, trust, tenant, key).map(|_| ()),
        "index" => bascule_core::seal::open(bytes, &customer(), 1 << 30, key, &[]).and_then(|plain| {
            serde_json::from_slice::<Index>(&plain)
                .map(|_| ())
                .map_err(|e| bascule_core::Error::Body { key: key.into(), reason: e.to_string() })
        }),
        other => panic!("unknown kind {other:?}"),
    };
    match result {
        Ok(()) => "accepted".into(),
        Err(e) => name(e),
    }
}

#[test]
fn every_golden_invalid_object_is_refused_with_its_named_error() {
    if std::env::var_os("BASCULE_REGENERATE_GOLDEN").is_some() {
        regenerate();
    }
    let dir = data().join("invalid");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "golden"))
        .collect();
    files.sort();
    assert!(files.len() >= 15, "tests/data/invalid holds {} objects", files.len());
    let verify = agent_key().verify_key();
    for f in &files {
        let raw = std::fs::read(f).unwrap();
        let split = raw.windows(5).position(|w| w == b"\n---\n").unwrap_or_else(|| panic!("{}: no `---` line", f.display()));
        let header = std::str::from_utf8(&raw[..split]).unwrap();
        let bytes = &raw[split + 5..];
        let field = |name: &str| -> String {
            header
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                .unwrap_or_else(|| panic!("{}: no `{name}:` line", f.display()))
                .to_string()
        };
        let trust = match field("trust").split_once(' ') {
            Some(("revoked", t)) => TrustedKey { key: verify, valid_from: None, revoked_at: Some(at(t)) },
            _ => TrustedKey::from(verify),
        };
        let got = refusal(&field("kind"), &field("tenant"), &field("key"), &[trust], bytes);
        assert_eq!(got, field("expect"), "{}", f.display());
    }
}

/// A valid object of each kind, then what is done to it.
fn head(tenant: &str, at_: &str) -> Head {
    Head { format: 1, tenant: tenant.into(), sequence: 7, latest_snapshot: None, latest_wal: None, agent_time: at(at_), restore_test: None }
}

fn flip(mut b: Vec<u8>) -> Vec<u8> {
    let i = b.len() - 3;
    b[i] ^= 0x01;
    b
}

/// (file, what it is, kind, tenant, key, expected error, trust, bytes).
type Case<'a> = (&'a str, &'a str, &'a str, &'a str, &'a str, &'a str, &'a str, Vec<u8>);

fn head_cases(m: &Made) -> Vec<Case<'static>> {
    let (key, stranger) = (&m.key, &m.stranger);
    let h = head("mairie", "2026-06-01T01:30:00Z");
    let signed_head = h.sign(key);
    let manifest: Manifest = serde_json::from_str(include_str!("../data/valid/manifest.json")).unwrap();
    let mut with_field = serde_json::to_value(&h).unwrap();
    with_field["admin"] = true.into();
    vec![
        (
            "head-not-signed",
            "a HEAD's body with no envelope",
            "head",
            "mairie",
            "HEAD",
            "Envelope",
            "valid",
            serde_json::to_vec(&h).unwrap(),
        ),
        ("head-wrong-kind", "a validly signed manifest served as HEAD", "head", "mairie", "HEAD", "Envelope", "valid", manifest.sign(key)),
        (
            "head-unknown-key",
            "a HEAD signed by a key nobody registered",
            "head",
            "mairie",
            "HEAD",
            "BadSignature",
            "valid",
            h.sign(stranger),
        ),
        ("head-flipped-byte", "one bit of the body flipped", "head", "mairie", "HEAD", "BadSignature", "valid", flip(signed_head.clone())),
        (
            "head-truncated",
            "the signed HEAD cut short",
            "head",
            "mairie",
            "HEAD",
            "BadSignature",
            "valid",
            signed_head[..signed_head.len() - 10].to_vec(),
        ),
        (
            "head-bad-sig-line",
            "a `sig` line that is not 64 bytes of hex",
            "head",
            "mairie",
            "HEAD",
            "Envelope",
            "valid",
            String::from_utf8(signed_head.clone()).unwrap().replacen("\nsig ", "\nsig zz", 1).into_bytes(),
        ),
        (
            "head-other-tenant",
            "a genuine HEAD of another tenant",
            "head",
            "mairie",
            "HEAD",
            "Body",
            "valid",
            head("voisine", "2026-06-01T01:30:00Z").sign(key),
        ),
        (
            "head-after-revocation",
            "a HEAD whose time is after the key's revocation",
            "head",
            "mairie",
            "HEAD",
            "KeyNotValid",
            "revoked 2026-01-01T00:00:00Z",
            signed_head.clone(),
        ),
        (
            "head-unknown-field",
            "a validly signed body with a field the format does not have",
            "head",
            "mairie",
            "HEAD",
            "Body",
            "valid",
            signed::sign(Kind::Head, &with_field, key),
        ),
    ]
}

fn object_cases(m: &Made) -> Vec<Case<'static>> {
    let (key, stranger) = (&m.key, &m.stranger);
    let text = std::fs::read_to_string(data().join("keys/customer.key")).unwrap();
    let customer: bascule_core::keys::Recipient = text.lines().find_map(|l| l.strip_prefix("# public key: ")).unwrap().parse().unwrap();
    let (_, other_recipient) = Identities::generate();
    let manifest: Manifest = serde_json::from_str(include_str!("../data/valid/manifest.json")).unwrap();
    let wal_name = WalName::parse("000000010000000000000003").unwrap();
    let mut record: WalRecord = serde_json::from_str(include_str!("../data/valid/wal-record.json")).unwrap();
    record.object.key = WalName::parse("000000010000000000000004").unwrap().object_key();
    let restore: RestoreTestResult = serde_json::from_str(include_str!("../data/valid/restore-test.json")).unwrap();
    let report: Report = serde_json::from_str(include_str!("../data/valid/report.json")).unwrap();
    let seal = |plain: &[u8], to: &bascule_core::keys::Recipient| bascule_core::seal::seal(plain, std::slice::from_ref(to)).unwrap();
    let index = seal(br#"{"format":2,"segments":"not a list"}"#, &customer);
    let record_key: &'static str = Box::leak(wal_name.record_key().into_boxed_str());
    let report_key: &'static str = Box::leak(report.key().into_boxed_str());
    vec![
        (
            "manifest-renamed",
            "a genuine manifest stored under another snapshot's name",
            "manifest",
            "mairie",
            "snapshots/20260102T013000Z-00000000.manifest",
            "Body",
            "valid",
            manifest.sign(key),
        ),
        (
            "wal-record-elsewhere",
            "a WAL record whose sealed file is another segment's",
            "wal",
            "mairie",
            record_key,
            "Body",
            "valid",
            signed::sign(Kind::Wal, &record, key),
        ),
        (
            "restore-test-other-tenant",
            "a genuine restore test result of another tenant",
            "restore-test",
            "voisine",
            "reports/restore-tests/20260601T020000.000Z-nightly.json",
            "Body",
            "valid",
            restore.sign(key),
        ),
        (
            "report-unknown-key",
            "a drill report signed by a key nobody registered",
            "report",
            "reports",
            report_key,
            "BadSignature",
            "valid",
            report.sign(stranger),
        ),
        (
            "index-not-an-index",
            "a sealed object whose plaintext is not an index",
            "index",
            "mairie",
            "snapshots/x.index",
            "Body",
            "valid",
            index.clone(),
        ),
        (
            "index-other-recipient",
            "an index sealed to someone else's key",
            "index",
            "mairie",
            "snapshots/x.index",
            "WrongIdentity",
            "valid",
            seal(br#"{"format":2}"#, &other_recipient),
        ),
        (
            "index-truncated",
            "a sealed index cut short",
            "index",
            "mairie",
            "snapshots/x.index",
            "Open",
            "valid",
            index[..index.len() - 20].to_vec(),
        ),
        (
            "index-flipped-byte",
            "one bit of a sealed index flipped",
            "index",
            "mairie",
            "snapshots/x.index",
            "Open",
            "valid",
            flip(index.clone()),
        ),
        (
            "index-garbage",
            "bytes that are not an age file",
            "index",
            "mairie",
            "snapshots/x.index",
            "Open",
            "valid",
            b"garbage of the right length?".to_vec(),
        ),
    ]
}

fn condemned_cases(m: &Made) -> Vec<Case<'static>> {
    let stranger = &m.stranger;
    let manifest: Manifest = serde_json::from_str(include_str!("../data/valid/manifest.json")).unwrap();
    let at = at("2026-06-01T04:00:00Z");
    let list = Condemned {
        format: bascule_core::condemned::FORMAT,
        tenant: "mairie".into(),
        name: "20260601T040000Z-00c0ffee".into(),
        condemned_at: at,
        grace_seconds: 0,
        packs: manifest.objects.clone(),
    };
    let list_key: &'static str = Box::leak(bascule_core::condemned::key(&list.name).into_boxed_str());
    vec![
        (
            "condemned-forged",
            "a condemned list naming a snapshot's packs, signed by a key that is not the controller's",
            "condemned",
            "mairie",
            list_key,
            "BadSignature",
            "valid",
            list.sign(stranger),
        ),
        (
            "condemned-unsigned",
            "a condemned list in the unsigned format 1",
            "condemned",
            "mairie",
            list_key,
            "Envelope",
            "valid",
            serde_json::to_vec(&list).unwrap(),
        ),
    ]
}

/// What every case is made from.
struct Made {
    key: AgentKey,
    stranger: AgentKey,
}

fn regenerate() {
    let made = Made { key: agent_key(), stranger: AgentKey::generate() };
    let mut cases = head_cases(&made);
    cases.extend(object_cases(&made));
    cases.extend(condemned_cases(&made));
    let dir = data().join("invalid");
    std::fs::create_dir_all(&dir).unwrap();
    for (file, what, kind, tenant, key, expect, trust, bytes) in cases {
        let mut out = format!("# {what}\nkind: {kind}\ntenant: {tenant}\nkey: {key}\ntrust: {trust}\nexpect: {expect}\n---\n").into_bytes();
        out.extend_from_slice(&bytes);
        std::fs::write(dir.join(format!("{file}.golden")), out).unwrap();
    }
}
