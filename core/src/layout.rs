//! Names of the objects under `<prefix>/<tenant>/` on a provider.
// Parses what a provider (or a source) serves: total, no panic (see the
// threat model in the README).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing))]

pub const HEAD: &str = "HEAD";
pub const PACKS: &str = "packs/";
pub const SNAPSHOTS: &str = "snapshots/";
/// Lists of packs a prune condemned (see `retention`).
pub const PRUNE: &str = "prune/";
/// Signed results of on-site restore tests.
pub const RESTORE_TESTS: &str = "reports/restore-tests/";

/// `packs/<id[0..2]>/<id>`; `id` is the BLAKE3 of the pack's bytes.
pub fn pack(id: &str) -> String {
    format!("{PACKS}{}/{id}", &id[..2])
}

/// `snapshots/<time>-<id>.manifest`; `name` is `<time>-<id>`.
pub fn manifest(name: &str) -> String {
    format!("{SNAPSHOTS}{name}.manifest")
}

/// The snapshot name (`<time>-<id>`) of a manifest key, if it is one.
pub fn manifest_name(key: &str) -> Option<&str> {
    key.strip_prefix(SNAPSHOTS)?.strip_suffix(".manifest")
}

/// A new snapshot name: UTC time, then 8 random hex digits.
pub fn new_snapshot_name(at: chrono::DateTime<chrono::Utc>) -> String {
    let mut r = [0u8; 4];
    // kept: without the operating system's random source nothing new can be named
    #[allow(clippy::expect_used)]
    getrandom::getrandom(&mut r).expect("the operating system's random source is unavailable");
    format!("{}-{}", at.format("%Y%m%dT%H%M%SZ"), hex::encode(r))
}

/// `snapshots/<time>-<id>.index`: the sealed index of a snapshot.
pub fn index(name: &str) -> String {
    format!("{SNAPSHOTS}{name}.index")
}
