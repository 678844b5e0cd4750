//! Names of the objects under `<prefix>/<tenant>/` on a provider.

pub const HEAD: &str = "HEAD";
pub const CHUNKS: &str = "chunks/";
pub const SNAPSHOTS: &str = "snapshots/";

/// `chunks/<id[0..2]>/<id>`
pub fn chunk(id: &str) -> String {
    format!("{CHUNKS}{}/{id}", &id[..2])
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
    getrandom::getrandom(&mut r).expect("random source");
    format!("{}-{}", at.format("%Y%m%dT%H%M%SZ"), hex::encode(r))
}

/// `snapshots/<time>-<id>.index`: the sealed index of a snapshot.
pub fn index(name: &str) -> String {
    format!("{SNAPSHOTS}{name}.index")
}
