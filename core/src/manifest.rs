//! The snapshot manifest: a signed plaintext envelope that anyone holding the
//! agent's verify key can check, and a sealed index that only the customer's
//! identity opens.
// Parses what a provider (or a source) serves: total, no panic (see the
// threat model in the README).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing))]
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::chunker::ChunkerParams;
use crate::object::ObjectRef;
use crate::signed::{Kind, Signed};

/// 2: the index lists segments and extents (format 1 listed every chunk with its hash).
pub const FORMAT: u32 = 2;

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

impl Signed for Manifest {
    const KIND: Kind = Kind::Manifest;
    /// A manifest lists its packs: 64 MiB holds about half a million.
    const MAX_LEN: u64 = 64 << 20;

    /// The key that signed must have been valid when the snapshot started.
    fn signed_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.started_at
    }

    fn tenant(&self) -> &str {
        &self.tenant
    }

    fn stored_at(&self) -> Option<String> {
        Some(crate::layout::manifest(&self.name))
    }
}

impl Manifest {
    /// Checks a manifest's signature, that its key was valid when the
    /// snapshot started, and that it is snapshot `name` of `tenant`.
    pub fn open(bytes: &[u8], keys: &[crate::keys::TrustedKey], tenant: &str, name: &str) -> crate::Result<Manifest> {
        <Manifest as Signed>::open(bytes, keys, tenant, &crate::layout::manifest(name))
    }

    /// Every object the snapshot needs, the index first.
    pub fn all_objects(&self) -> impl Iterator<Item = &ObjectRef> {
        std::iter::once(&self.index).chain(self.objects.iter())
    }
}

/// A sealed segment: consecutive new chunks of one export sealed together as
/// a standalone `age(zstd(…))` file, at bytes `at..at+len` of pack `pack`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Segment {
    /// Position of the pack in [`Manifest::objects`].
    pub pack: u32,
    /// Byte offset of the segment in the pack.
    pub at: u64,
    /// Ciphertext length of the segment.
    pub len: u32,
    /// BLAKE3 of the segment's ciphertext, checked before it is decrypted.
    pub hash: String,
}

/// Consecutive chunks of the stream that lie end to end in one segment's
/// plaintext, the first at byte `offset`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Extent {
    /// Position of the segment in [`Index::segments`].
    pub segment: u32,
    pub offset: u32,
    /// Plaintext length of each chunk.
    pub lens: Vec<u32>,
}

/// The sealed part: only the customer's identity reads it.
///
/// Its size grows with the segments a snapshot uses and one small number per
/// chunk (no per-chunk hash): the integrity of each byte comes from the
/// segment's ciphertext hash (authenticated by the signed manifest, which
/// holds this index's hash) and, end to end, from the stream hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Index {
    pub format: u32,
    pub segments: Vec<Segment>,
    /// The stream, in order.
    pub extents: Vec<Extent>,
    /// BLAKE3 of the chunks' plaintext BLAKE3 hashes (32 bytes each), in
    /// stream order: the whole stream's fingerprint, computed by the agent
    /// without a second pass over its bytes and checked at every restore.
    pub stream_hash: String,
    /// Rows per table (`schema.table`), counted in the snapshot the dump used.
    pub row_counts: BTreeMap<String, u64>,
    /// Free-form facts about the source (server version, database name…).
    pub source: BTreeMap<String, String>,
    /// The roles that own the dump's objects, read from its table of
    /// contents: a restore that keeps owners needs them on its target.
    /// Empty when unknown (a dump the scanner could not read, an export
    /// from before this field).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owners: Vec<String>,
    /// The roles its privileges name (grantees, grantors): a restore that
    /// keeps privileges needs them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grantees: Vec<String>,
    /// For a `pg_dump` export: where its table of contents ends and each
    /// table's data begins in the stream, so that a restore can fetch and
    /// load tables in parallel. Absent when unknown (the scanner could not
    /// read the dump, an export from before this field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<ArchiveLayout>,
}

/// Where the parts of a custom-format archive lie in the stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveLayout {
    /// Bytes of the header and table of contents (the data starts there).
    pub toc_end: u64,
    /// Every data block, in stream order; each ends where the next begins,
    /// the last at the end of the stream.
    pub blocks: Vec<DataBlock>,
}

/// One data block of the archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataBlock {
    /// The dump id of its table-of-contents entry.
    pub id: i64,
    /// Its first byte in the stream.
    pub at: u64,
    /// A block of large objects rather than a table's rows.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub large_objects: bool,
}

/// Where one chunk of the stream lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkAt {
    pub segment: u32,
    /// Byte offset of the chunk in the segment's plaintext.
    pub offset: u32,
    pub len: u32,
}

impl Index {
    /// Every chunk of the stream, in order.
    pub fn chunks(&self) -> impl Iterator<Item = ChunkAt> + '_ {
        self.chunks_from_extent(0)
    }

    /// The chunks of the stream from the first of extent `first` on.
    pub fn chunks_from_extent(&self, first: usize) -> impl Iterator<Item = ChunkAt> + '_ {
        self.extents.get(first..).unwrap_or_default().iter().flat_map(|e| {
            e.lens.iter().scan(e.offset, move |offset, &len| {
                let c = ChunkAt { segment: e.segment, offset: *offset, len };
                *offset = offset.saturating_add(len);
                Some(c)
            })
        })
    }

    pub fn chunk_count(&self) -> usize {
        self.extents.iter().map(|e| e.lens.len()).sum()
    }

    /// Checks that every segment lies inside the manifest's packs and every
    /// chunk inside the plaintext a segment can have; `key` is the index's.
    pub fn check_refs(&self, m: &Manifest, key: &str) -> crate::Result<()> {
        let bad = |reason: String| crate::Error::Body { key: key.into(), reason };
        for (i, s) in self.segments.iter().enumerate() {
            let o = m.objects.get(s.pack as usize).ok_or_else(|| bad(format!("segment {i} points past the manifest's packs")))?;
            if s.at.saturating_add(s.len as u64) > o.len {
                return Err(bad(format!("segment {i} lies outside {}", o.key)));
            }
        }
        let plain_max = m.segment_size.saturating_add(2 * m.chunker.max_size as u64);
        for (i, e) in self.extents.iter().enumerate() {
            if e.segment as usize >= self.segments.len() {
                return Err(bad(format!("extent {i} points past the index's segments")));
            }
            if (e.offset as u64).saturating_add(e.lens.iter().map(|l| *l as u64).sum::<u64>()) > plain_max {
                return Err(bad(format!("extent {i} lies outside any segment")));
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
        let index = |pack, at, len, offset| Index {
            format: FORMAT,
            segments: vec![Segment { pack, at, len, hash: String::new() }],
            extents: vec![Extent { segment: 0, offset, lens: vec![10, 20] }],
            stream_hash: String::new(),
            row_counts: BTreeMap::new(),
            source: BTreeMap::new(),
            owners: Vec::new(),
            grantees: Vec::new(),
            archive: None,
        };
        assert!(index(0, 0, 1000, 0).check_refs(&m, "i").is_ok());
        assert!(index(1, 0, 10, 0).check_refs(&m, "i").is_err(), "no such pack");
        assert!(index(0, 990, 20, 0).check_refs(&m, "i").is_err(), "past the pack's end");
        assert!(index(0, 0, 10, u32::MAX - 5).check_refs(&m, "i").is_err(), "past any segment");
        let mut i = index(0, 0, 1000, 0);
        i.extents[0].segment = 1;
        assert!(i.check_refs(&m, "i").is_err(), "no such segment");
    }

    #[test]
    fn extents_list_the_chunks_in_order() {
        let i = Index {
            format: FORMAT,
            segments: vec![],
            extents: vec![Extent { segment: 3, offset: 100, lens: vec![10, 20] }, Extent { segment: 1, offset: 0, lens: vec![5] }],
            stream_hash: String::new(),
            row_counts: BTreeMap::new(),
            source: BTreeMap::new(),
            owners: Vec::new(),
            grantees: Vec::new(),
            archive: None,
        };
        let at = |segment, offset, len| ChunkAt { segment, offset, len };
        assert_eq!(i.chunks().collect::<Vec<_>>(), vec![at(3, 100, 10), at(3, 110, 20), at(1, 0, 5)]);
        assert_eq!(i.chunk_count(), 3);
    }
}
