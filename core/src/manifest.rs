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
}

impl std::fmt::Display for SnapshotKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SnapshotKind::PgDump => "pg_dump",
            SnapshotKind::Command => "command",
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
    /// Every pack the snapshot needs, each once.
    pub objects: Vec<ObjectRef>,
    /// Every chunk blob the snapshot needs, each once: where it lies.
    pub blobs: Vec<BlobRef>,
}

/// Where a chunk lies. Consecutive new chunks are sealed together as one
/// *segment*, a standalone `age(zstd(…))` file at bytes `at..at+len` of a
/// pack; the chunk is bytes `offset..offset+length` of the segment's
/// plaintext (its length is in the sealed index).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobRef {
    /// Keyed BLAKE3 of the chunk's plaintext (hex).
    pub id: String,
    /// Position of its pack in [`Manifest::objects`].
    pub object: u32,
    /// Byte offset of the segment in the pack.
    pub at: u64,
    /// Ciphertext length of the segment.
    pub len: u32,
    /// Byte offset of the chunk in the segment's plaintext.
    pub offset: u32,
}

impl Manifest {
    /// Checks that every blob and index entry points inside the manifest.
    pub fn check_refs(&self) -> Result<(), String> {
        for (i, b) in self.blobs.iter().enumerate() {
            let o = self.objects.get(b.object as usize).ok_or_else(|| format!("blob {i} points past the objects"))?;
            if b.at + b.len as u64 > o.len || b.offset as u64 > self.segment_size + self.chunker.max_size as u64 {
                return Err(format!("blob {i} lies past the end of {}", o.key));
            }
        }
        Ok(())
    }

    /// Every object the snapshot needs, the index first.
    pub fn all_objects(&self) -> impl Iterator<Item = &ObjectRef> {
        std::iter::once(&self.index).chain(self.objects.iter())
    }

    /// The snapshot's short id (the random part of its name).
    pub fn id(&self) -> &str {
        self.name.rsplit('-').next().unwrap_or(&self.name)
    }
}

/// One chunk in stream order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexEntry {
    /// Position in [`Manifest::blobs`].
    pub blob: u32,
    /// Plaintext length.
    pub len: u32,
    /// BLAKE3 of the plaintext.
    pub hash: String,
}

/// The sealed part: only the customer's identity reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Index {
    pub format: u32,
    pub chunks: Vec<IndexEntry>,
    /// BLAKE3 of the whole source stream.
    pub stream_hash: String,
    /// Rows per table (`schema.table`), counted in the snapshot the dump used.
    pub row_counts: BTreeMap<String, u64>,
    /// Free-form facts about the source (server version, database name…).
    pub source: BTreeMap<String, String>,
}
