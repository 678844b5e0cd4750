//! Fuzz targets, on stable Rust: proptest drives each parser of what a
//! provider (or a source) serves with arbitrary bytes and with mutations of
//! valid objects (bits flipped, bytes inserted, removed, cut), for a given
//! time. A panic is a failure: proptest shrinks it to a small input, which is
//! kept under `tests/data/fuzz-regressions/<target>/` and replayed by the
//! test suite from then on.
//!
//! proptest rather than cargo-fuzz or bolero: it runs on the stable
//! toolchain with no sanitizer runtime, needs no new dependency (the format
//! tests use it), and shrinks what it finds; it is not coverage-guided, which
//! the mutations of valid seeds make up for in part.
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bascule_core::keys::{AgentKey, Identities};
use bascule_core::manifest::Manifest;
use bascule_core::signed::Signed;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};

/// One parser, fed bytes.
pub struct Target {
    pub name: &'static str,
    run: fn(&[u8]),
    seeds: fn() -> Vec<Vec<u8>>,
}

/// What a run of one target did.
#[derive(Debug)]
pub struct Outcome {
    pub target: &'static str,
    pub cases: u64,
    /// The minimal input of each failure found, and why.
    pub failures: Vec<(Vec<u8>, String)>,
}

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data")
}

fn signer() -> &'static AgentKey {
    static K: OnceLock<AgentKey> = OnceLock::new();
    // a repository file's mode is 0644: read its text, not the file as a key file
    K.get_or_init(|| {
        let p = data().join("keys/agent.key");
        AgentKey::parse(&std::fs::read_to_string(&p).expect("tests/data/keys/agent.key"), &p).expect("tests/data/keys/agent.key")
    })
}

fn customer() -> &'static Identities {
    static C: OnceLock<Identities> = OnceLock::new();
    C.get_or_init(|| {
        Identities::parse(&std::fs::read_to_string(data().join("keys/customer.key")).expect("tests/data/keys/customer.key"))
            .expect("tests/data/keys/customer.key")
    })
}

fn valid(name: &str) -> Vec<u8> {
    std::fs::read(data().join("valid").join(name)).unwrap_or_default()
}

fn manifest() -> &'static Manifest {
    static M: OnceLock<Manifest> = OnceLock::new();
    M.get_or_init(|| serde_json::from_slice(&valid("manifest.json")).expect("tests/data/valid/manifest.json"))
}

fn signed_seeds() -> Vec<Vec<u8>> {
    let head: bascule_core::head::Head = serde_json::from_str(
        r#"{"format":1,"tenant":"t","sequence":3,"latest_snapshot":"20260101T013000Z-0123abcd","latest_wal":"000000010000000000000003","agent_time":"2026-06-01T01:30:00Z"}"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    vec![head.sign(signer()), manifest().sign(signer()), valid("report.json")]
}

fn body_seeds() -> Vec<Vec<u8>> {
    ["manifest.json", "wal-record.json", "restore-test.json", "report.json"].iter().map(|n| valid(n)).collect()
}

fn index_seeds() -> Vec<Vec<u8>> {
    vec![
        br#"{"format":2,"segments":[{"pack":0,"at":0,"len":60000,"hash":"ab"}],"extents":[{"segment":0,"offset":0,"lens":[100,200,300]}],"stream_hash":"x","row_counts":{"public.t":3},"source":{}}"#.to_vec(),
    ]
}

fn sealed_seeds() -> Vec<Vec<u8>> {
    let text = std::fs::read_to_string(data().join("keys/customer.key")).unwrap_or_default();
    let r: Option<bascule_core::keys::Recipient> = text.lines().find_map(|l| l.strip_prefix("# public key: ")).and_then(|r| r.parse().ok());
    r.map(|r| vec![bascule_core::seal::seal(b"a segment of the stream", std::slice::from_ref(&r)).unwrap_or_default()]).unwrap_or_default()
}

fn name_seeds() -> Vec<Vec<u8>> {
    [
        "000000010000000A000000FF",
        "wal/00000001/000000010000000000000003.rec",
        "00000002.history",
        "snapshots/20260101T013000Z-0123abcd.manifest",
        "0/3000060",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

fn tar_member(name: &str, body: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[124..136].copy_from_slice(format!("{:011o}\0", body.len()).as_bytes());
    h[156] = b'0';
    h.extend_from_slice(body);
    h.resize(h.len().div_ceil(512) * 512, 0);
    h
}

fn tar_seeds() -> Vec<Vec<u8>> {
    let mut t = tar_member("backup_label", b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nSTART TIMELINE: 1\n");
    t.extend(tar_member(
        "backup_manifest",
        br#"{ "WAL-Ranges": [ { "Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000100" } ] }"#,
    ));
    t.extend([0u8; 1024]);
    vec![t]
}

fn xml_seeds() -> Vec<Vec<u8>> {
    vec![
        b"<VersioningConfiguration><Status>Enabled</Status></VersioningConfiguration>".to_vec(),
        b"<ObjectLockConfiguration><ObjectLockEnabled>Enabled</ObjectLockEnabled><Rule><DefaultRetention><Mode>COMPLIANCE</Mode><Days>30</Days></DefaultRetention></Rule></ObjectLockConfiguration>".to_vec(),
    ]
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The first bytes of an input choose how it is cut into pieces.
fn piece(b: &[u8]) -> usize {
    b.first().map(|p| 1 + *p as usize * 16).unwrap_or(4096)
}

/// Every target.
pub fn targets() -> Vec<Target> {
    vec![
        Target { name: "names", run: |b| bascule_core::fuzz::names(&text(b)), seeds: name_seeds },
        Target { name: "envelope", run: |b| bascule_core::fuzz::envelope(b, &signer().verify_key()), seeds: signed_seeds },
        Target { name: "bodies", run: |b| bascule_core::fuzz::bodies(b, signer()), seeds: body_seeds },
        Target { name: "index", run: |b| bascule_core::fuzz::index(b, manifest()), seeds: index_seeds },
        Target { name: "sealed", run: |b| bascule_core::fuzz::sealed(b, customer()), seeds: sealed_seeds },
        Target { name: "protection", run: |b| bascule_core::fuzz::protection(200, &text(b)), seeds: xml_seeds },
        Target {
            name: "dump-stream",
            run: |b| bascule_agent::source::fuzz::dump_stream(b, piece(b)),
            seeds: || vec![std::fs::read(data().join("fuzz-seeds/dump.pgc")).unwrap_or_default()],
        },
        Target { name: "tar-stream", run: |b| bascule_agent::source::fuzz::tar_stream(b, piece(b)), seeds: tar_seeds },
    ]
}

/// Arbitrary bytes, or a valid seed with a few bytes flipped, inserted,
/// removed, or the whole cut short.
fn inputs(seeds: Vec<Vec<u8>>) -> BoxedStrategy<Vec<u8>> {
    let random = proptest::collection::vec(any::<u8>(), 0..4096).boxed();
    if seeds.is_empty() {
        return random;
    }
    let mutated = (proptest::sample::select(seeds), proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..5), 1..8)).prop_map(
        |(mut s, edits)| {
            for (at, byte, op) in edits {
                let i = if s.is_empty() { 0 } else { at % s.len() };
                match op {
                    0 if !s.is_empty() => s[i] ^= 1 << (byte % 8),
                    1 => s.insert(i.min(s.len()), byte),
                    2 if !s.is_empty() => drop(s.remove(i)),
                    3 => s.truncate(i),
                    _ if !s.is_empty() => s[i] = byte,
                    _ => s.push(byte),
                }
            }
            s
        },
    );
    prop_oneof![1 => random, 3 => mutated].boxed()
}

/// Runs `target` for `time`; the cases tried and the failures found.
pub fn run(target: &Target, time: Duration) -> Outcome {
    let strategy = inputs((target.seeds)());
    let t0 = Instant::now();
    let mut out = Outcome { target: target.name, cases: 0, failures: Vec::new() };
    let batch = 256;
    while t0.elapsed() < time {
        let config = Config { cases: batch, failure_persistence: None, max_shrink_iters: 4096, ..Config::default() };
        // a fresh seed for every batch
        let mut seed = [0u8; 32];
        let _ = getrandom::getrandom(&mut seed);
        let rng = proptest::test_runner::TestRng::from_seed(proptest::test_runner::RngAlgorithm::ChaCha, &seed);
        let mut runner = TestRunner::new_with_rng(config, rng);
        let f = target.run;
        let result = runner.run(&strategy, |input| {
            f(&input);
            Ok::<(), TestCaseError>(())
        });
        out.cases += batch as u64;
        if let Err(TestError::Fail(why, input)) = result {
            out.failures.push((input, why.to_string()));
            break;
        }
    }
    out
}

/// Where the failures found are kept, one file each, replayed by the tests.
pub fn regressions_dir(target: &str) -> PathBuf {
    data().join("fuzz-regressions").join(target)
}

/// Replays every kept failure of `target` (each must now pass).
pub fn replay(target: &Target) -> usize {
    let Ok(dir) = std::fs::read_dir(regressions_dir(target.name)) else { return 0 };
    let mut n = 0;
    for e in dir.flatten() {
        let input = std::fs::read(e.path()).unwrap_or_default();
        (target.run)(&input);
        n += 1;
    }
    n
}
