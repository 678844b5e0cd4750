//! The agent's local chunk tables: which chunks it already stored, in which
//! segment of which pack, so that the next export sends only what changed.
//!
//! One line per pack, a [`JournalEntry`]: the pack and its segments, each
//! with the chunks in it. `<job>.<recipients>.chunks` holds those of the last
//! committed snapshot (what the next run can reuse);
//! `<job>.<recipients>.packs.journal` those of packs uploaded since, not
//! committed yet (so that a killed run's packs are reused). `<recipients>`
//! names the set of age recipients the packs are sealed to: after a change of
//! recipients (a key rotation), nothing sealed to the old set is reused, so
//! every new snapshot opens with the new identity. Chunk ids never leave the
//! site; losing these files only costs a full upload.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use bascule_core::keys::Recipient;
use bascule_core::manifest::Segment;
use bascule_core::object::ObjectRef;
use serde::{Deserialize, Serialize};

use crate::chunk_id::{ChunkId, IdMap};

/// A segment stored by an earlier snapshot or an earlier (killed) run.
pub(super) struct KnownSegment {
    pub pack: Arc<ObjectRef>,
    pub at: u64,
    pub len: u32,
    pub hash: String,
}

/// A chunk stored by an earlier snapshot or run: its segment (a position in
/// [`Known::segments`]), and where it starts in the segment's plaintext.
#[derive(Clone, Copy)]
pub(super) struct KnownBlob {
    pub segment: u32,
    pub offset: u32,
}

/// The chunks this agent already stored, 24 bytes each in memory.
#[derive(Default)]
pub(super) struct Known {
    pub segments: Vec<KnownSegment>,
    pub blobs: IdMap<KnownBlob>,
}

/// A segment of a pack, and the chunks in it: (chunk id, offset in the plaintext).
#[derive(Serialize, Deserialize)]
pub(super) struct JournalSegment {
    pub at: u64,
    pub len: u32,
    pub hash: String,
    pub chunks: Vec<(ChunkId, u32)>,
}

/// One line of a chunk table or journal: a pack, its segments and the chunks in them.
#[derive(Serialize, Deserialize)]
pub(super) struct JournalEntry {
    pub pack: ObjectRef,
    pub segments: Vec<JournalSegment>,
}

/// Where a chunk of this run lies: a position in the run's segment table
/// (`u32::MAX` until its segment is sealed) and its offset in the segment's
/// plaintext.
pub(super) struct BlobRef {
    pub id: ChunkId,
    pub segment: u32,
    pub offset: u32,
}

/// The two files of a job's tables, for the current set of recipients.
pub(super) struct Tables {
    /// Chunks of the last committed snapshot.
    pub table: PathBuf,
    /// Packs uploaded since, not committed yet.
    pub journal: PathBuf,
}

impl Tables {
    pub fn of(state_dir: &Path, job: &str, recipients: &[Recipient]) -> Tables {
        let sealed_to = recipients_tag(recipients);
        Tables {
            journal: state_dir.join(format!("{job}.{sealed_to}.packs.journal")),
            table: state_dir.join(format!("{job}.{sealed_to}.chunks")),
        }
    }

    /// Chunks this agent already stored: those of the last committed
    /// snapshot and those of packs uploaded by a run that did not commit.
    pub fn read(&self) -> anyhow::Result<Known> {
        known_blobs(&[&self.table, &self.journal])
    }

    /// Appends a pack to the journal, durably (run on the blocking pool).
    pub fn journal_append(journal: &Path, entry: &JournalEntry) -> anyhow::Result<()> {
        let line = serde_json::to_string(entry)? + "\n";
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(journal).with_context(|| journal.display().to_string())?;
        f.write_all(line.as_bytes()).and_then(|_| f.sync_data()).context("writing the pack journal")
    }

    /// After a commit: the chunk table of the snapshot replaces the old one,
    /// and the journal's packs are either in it or no longer needed.
    pub fn committed(&self, objects: &[ObjectRef], segments: &[Segment], blobs: &[BlobRef]) -> anyhow::Result<()> {
        bascule_core::config::write_atomic_with(&self.table, |out| write_chunk_table(out, objects, segments, blobs))?;
        match std::fs::remove_file(&self.journal) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(error = %e, journal = %self.journal.display(), "Cannot clear the pack journal"),
        }
        Ok(())
    }
}

/// A short name for a set of recipients (whatever their order).
fn recipients_tag(recipients: &[Recipient]) -> String {
    let mut all: Vec<String> = recipients.iter().map(|r| r.to_string()).collect();
    all.sort();
    all.dedup();
    blake3::hash(all.join("\n").as_bytes()).to_hex()[..12].to_string()
}

/// Reads the tables line by line: a line cut by a crash (or written by an
/// older format) is ignored, its pack is simply not reused.
fn known_blobs(files: &[&Path]) -> anyhow::Result<Known> {
    use std::io::BufRead;
    let mut known = Known::default();
    for file in files {
        let f = match std::fs::File::open(file) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| file.display().to_string()),
        };
        for line in std::io::BufReader::new(f).lines() {
            let line = line.with_context(|| file.display().to_string())?;
            let Ok(entry) = serde_json::from_str::<JournalEntry>(&line) else { continue };
            let pack = Arc::new(entry.pack);
            for s in entry.segments {
                let segment = known.segments.len() as u32;
                known.segments.push(KnownSegment { pack: pack.clone(), at: s.at, len: s.len, hash: s.hash });
                for (id, offset) in s.chunks {
                    known.blobs.entry(id).or_insert(KnownBlob { segment, offset });
                }
            }
        }
    }
    Ok(known)
}

/// Writes the chunk table of a committed snapshot, one line per pack, to `out`.
fn write_chunk_table(out: &mut dyn Write, objects: &[ObjectRef], segments: &[Segment], blobs: &[BlobRef]) -> std::io::Result<()> {
    let pack_of = |b: &BlobRef| segments[b.segment as usize].pack;
    let mut sorted: Vec<&BlobRef> = blobs.iter().collect();
    sorted.sort_by_key(|b| (pack_of(b), b.segment));
    for in_pack in sorted.chunk_by(|a, b| pack_of(a) == pack_of(b)) {
        let entry = JournalEntry {
            pack: objects[pack_of(in_pack[0]) as usize].clone(),
            segments: in_pack
                .chunk_by(|a, b| a.segment == b.segment)
                .map(|in_segment| {
                    let seg = &segments[in_segment[0].segment as usize];
                    let chunks = in_segment.iter().map(|b| (b.id, b.offset)).collect();
                    JournalSegment { at: seg.at, len: seg.len, hash: seg.hash.clone(), chunks }
                })
                .collect(),
        };
        serde_json::to_writer(&mut *out, &entry)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}
