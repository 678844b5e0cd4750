//! The snapshot manifest: a signed plaintext envelope that anyone holding the
//! agent's verify key can check, and a sealed index that only the customer's
//! identity opens.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::chunker::ChunkerParams;

pub const FORMAT: u32 = 1;

/// What produced the snapshot's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotKind {
    /// `pg_dump -Fc`: restored with `pg_restore`.
    PgDump,
    /// Any command's standard output.
    Command,
    /// `pg_basebackup` as a tar stream: restored with the WAL archive (PITR).
    Basebackup,
}

impl std::fmt::Display for SnapshotKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SnapshotKind::PgDump => "pg_dump",
            SnapshotKind::Command => "command",
            SnapshotKind::Basebackup => "basebackup",
        })
    }
}

/// One stored object: where, how long, and the BLAKE3 hash of its ciphertext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectRef {
    pub key: String,
    pub len: u64,
    pub hash: String,
}

/// The signed, plaintext part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub tenant: String,
    /// `<time>-<id>`, also the manifest's object name.
    pub name: String,
    pub kind: SnapshotKind,
    pub job: String,
    pub host: String,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: chrono::DateTime<chrono::Utc>,
    /// Bytes of the source stream (plaintext).
    pub source_bytes: u64,
    pub chunk_count: u64,
    /// Ciphertext bytes this snapshot stored for the first time.
    pub new_bytes: u64,
    /// Ciphertext bytes of all the objects it references.
    pub stored_bytes: u64,
    /// The age recipients every object of this snapshot is sealed to.
    pub recipients: Vec<String>,
    pub chunker: ChunkerParams,
    /// Target size of the packs this snapshot wrote.
    pub pack_size: u64,
    /// Target plaintext size of the segments (chunks sealed together).
    pub segment_size: u64,
    /// The sealed index (`age(zstd(json))`).
    pub index: ObjectRef,
    /// Every pack the snapshot needs, each once. Where each chunk lies is in
    /// the sealed index: chunk ids never leave the customer's site.
    pub objects: Vec<ObjectRef>,
    /// For a base backup: the WAL it needs (start and stop LSN, timeline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal: Option<crate::wal::WalRange>,
    /// The retention the agent's configuration asks for this job (the
    /// controller keeps at least this much).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<crate::retention::Retention>,
}

impl Manifest {
    /// Checks a manifest's signature, that its key was valid when the
    /// snapshot started, and that it is snapshot `name` of `tenant`.
    pub fn open(bytes: &[u8], keys: &[crate::keys::TrustedKey], tenant: &str, name: &str) -> crate::Result<Manifest> {
        let key = crate::layout::manifest(name);
        let (m, _): (Manifest, _) =
            crate::signed::open_valid(crate::signed::Kind::Manifest, bytes, keys, &key, |m: &Manifest| m.started_at)?;
        if m.tenant != tenant || m.name != name {
            return Err(crate::Error::Body { key, reason: format!("manifest is for {}/{}", m.tenant, m.name) });
        }
        Ok(m)
    }

    /// Every object the snapshot needs, the index first.
    pub fn all_objects(&self) -> impl Iterator<Item = &ObjectRef> {
        std::iter::once(&self.index).chain(self.objects.iter())
    }
}

/// One chunk in stream order. Consecutive new chunks are sealed together as
/// one *segment*, a standalone `age(zstd(…))` file at bytes `at..at+seg` of
/// pack `pack`; the chunk is bytes `offset..offset+len` of its plaintext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexEntry {
    /// Position of the pack in [`Manifest::objects`].
    pub pack: u32,
    /// Byte offset of the segment in the pack.
    pub at: u64,
    /// Ciphertext length of the segment.
    pub seg: u32,
    /// Byte offset of the chunk in the segment's plaintext.
    pub offset: u32,
    /// Plaintext length of the chunk.
    pub len: u32,
    /// BLAKE3 of the chunk's plaintext.
    pub hash: String,
}

/// The sealed part: only the customer's identity reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Index {
    pub format: u32,
    pub chunks: Vec<IndexEntry>,
    /// BLAKE3 of the chunks' plaintext hashes (32 bytes each) in stream
    /// order: see [`chain_hash`].
    pub stream_hash: String,
    /// Rows per table (`schema.table`), counted in the snapshot the dump used.
    pub row_counts: BTreeMap<String, u64>,
    /// Free-form facts about the source (server version, database name…).
    pub source: BTreeMap<String, String>,
}

/// Chains chunk hashes (hex) in stream order into one: the whole stream's
/// fingerprint, computed without a second pass over its bytes.
pub fn chain_hash<'a>(hashes: impl IntoIterator<Item = &'a str>) -> String {
    let mut h = blake3::Hasher::new();
    for x in hashes {
        let mut b = [0u8; 32];
        // a malformed hash chains as zeros; it fails its own check anyway
        let _ = hex::decode_to_slice(x, &mut b);
        h.update(&b);
    }
    h.finalize().to_hex().to_string()
}

impl Index {
    /// Checks that every entry points inside the manifest's packs.
    pub fn check_refs(&self, m: &Manifest) -> Result<(), String> {
        for (i, e) in self.chunks.iter().enumerate() {
            let o = m.objects.get(e.pack as usize).ok_or_else(|| format!("index entry {i} points past the manifest's packs"))?;
            if e.at + e.seg as u64 > o.len || e.offset as u64 + e.len as u64 > m.segment_size + 2 * m.chunker.max_size as u64 {
                return Err(format!("index entry {i} lies outside {}", o.key));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_refs_must_stay_inside_the_packs() {
        let obj = |k: &str, len| ObjectRef { key: k.into(), len, hash: String::new() };
        let m = Manifest {
            format: FORMAT,
            tenant: "t".into(),
            name: "n".into(),
            kind: SnapshotKind::PgDump,
            job: "j".into(),
            host: "h".into(),
            started_at: chrono::Utc::now(),
            finished_at: chrono::Utc::now(),
            source_bytes: 0,
            chunk_count: 0,
            new_bytes: 0,
            stored_bytes: 0,
            recipients: vec![],
            chunker: ChunkerParams::default(),
            pack_size: 1 << 23,
            segment_size: 1 << 18,
            index: obj("i", 1),
            objects: vec![obj("p", 1000)],
            wal: None,
            retention: None,
        };
        let index = |pack, at, seg, offset| Index {
            format: FORMAT,
            chunks: vec![IndexEntry { pack, at, seg, offset, len: 10, hash: String::new() }],
            stream_hash: String::new(),
            row_counts: BTreeMap::new(),
            source: BTreeMap::new(),
        };
        assert!(index(0, 0, 1000, 0).check_refs(&m).is_ok());
        assert!(index(1, 0, 10, 0).check_refs(&m).is_err(), "no such pack");
        assert!(index(0, 990, 20, 0).check_refs(&m).is_err(), "past the pack's end");
        assert!(index(0, 0, 10, u32::MAX - 5).check_refs(&m).is_err(), "past any segment");
    }
}
