//! The agent's local chunk tables: which chunks it already stored, in which
//! segment of which pack, so that the next export sends only what changed.
//!
//! `<job>.<recipients>.chunks` holds the chunks of the last committed
//! snapshot (what the next run can reuse), sorted by id and read from disk
//! as needed ([`super::table`]); `<job>.<recipients>.packs.journal` those of
//! packs uploaded since, not committed yet (so that a killed run's packs are
//! reused), one line per pack, a [`JournalEntry`]: the pack and its
//! segments, each with the chunks in it. `<recipients>`
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

use super::distinct::Distinct;
use super::table::{self, Header, Loc, OnDisk};
use crate::chunk_id::{ChunkId, IdMap};

/// A segment stored by an earlier snapshot or an earlier (killed) run.
pub(super) struct KnownSegment {
    pub pack: Arc<ObjectRef>,
    pub at: u64,
    pub len: u32,
    pub hash: String,
}

/// The chunks this agent already stored: those of the last snapshot on
/// disk, those of the journal (and of a table written by an older agent)
/// in memory, 24 bytes each.
#[derive(Default)]
pub(super) struct Known {
    /// The table's segments, then the journal's.
    pub segments: Vec<KnownSegment>,
    table: Option<OnDisk>,
    journal: IdMap<Loc>,
}

impl Known {
    /// Where `id` was stored, if it was.
    pub fn get(&self, id: &ChunkId) -> std::io::Result<Option<Loc>> {
        if let Some(t) = &self.table {
            if let Some(loc) = t.get(id)? {
                return Ok(Some(loc));
            }
        }
        Ok(self.journal.get(id).copied())
    }
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
        let mut known = Known::default();
        let mut lines = vec![&self.journal];
        match std::fs::File::open(&self.table) {
            Ok(f) if table::is_table(&f).with_context(|| self.table.display().to_string())? => {
                match OnDisk::open(f).with_context(|| self.table.display().to_string())? {
                    Ok((t, header)) => match segments_of(header) {
                        Some(segments) => {
                            known.segments = segments;
                            known.table = Some(t);
                        }
                        None => tracing::warn!(table = %self.table.display(), "The chunk table names a pack it does not list; not used"),
                    },
                    Err(why) => {
                        tracing::warn!(table = %self.table.display(), why, "The chunk table is not whole; not used (this export uploads every chunk)")
                    }
                }
            }
            // written by an older agent, JSON lines: read as a journal, rewritten at the commit
            Ok(_) => lines.insert(0, &self.table),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| self.table.display().to_string()),
        }
        read_lines(&mut known, &lines)?;
        Ok(known)
    }

    /// A spill file's name, next to the tables (see [`super::distinct`]).
    pub fn spill(&self) -> PathBuf {
        self.table.with_extension("chunks.spill")
    }

    /// Appends a pack to the journal, durably (run on the blocking pool).
    pub fn journal_append(journal: &Path, entry: &JournalEntry) -> anyhow::Result<()> {
        let line = serde_json::to_string(entry)? + "\n";
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(journal).with_context(|| journal.display().to_string())?;
        f.write_all(line.as_bytes()).and_then(|_| f.sync_data()).context("writing the pack journal")
    }

    /// After a commit: the chunk table of the snapshot replaces the old one,
    /// and the journal's packs are either in it or no longer needed.
    pub fn committed(&self, objects: &[ObjectRef], segments: &[Segment], chunks: Distinct) -> anyhow::Result<()> {
        let header = Header { packs: objects.to_vec(), segments: segments.iter().map(|s| (s.pack, s.at, s.len, s.hash.clone())).collect() };
        bascule_core::config::write_atomic_with(&self.table, |out| table::write(out, &header, |out| chunks.write_sorted(out).map(|_| ())))?;
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

/// The segments of a table's header; `None` if one names a pack it does not list.
fn segments_of(header: Header) -> Option<Vec<KnownSegment>> {
    let packs: Vec<Arc<ObjectRef>> = header.packs.into_iter().map(Arc::new).collect();
    header
        .segments
        .into_iter()
        .map(|(pack, at, len, hash)| packs.get(pack as usize).map(|p| KnownSegment { pack: p.clone(), at, len, hash }))
        .collect()
}

/// Reads journals line by line: a line cut by a crash (or written by an
/// older format) is ignored, its pack is simply not reused.
fn read_lines(known: &mut Known, files: &[&PathBuf]) -> anyhow::Result<()> {
    use std::io::BufRead;
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
                    known.journal.entry(id).or_insert(Loc { segment, offset });
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_of_json_lines_from_an_older_agent_is_still_reused() {
        let dir = tempfile::tempdir().unwrap();
        let tables = Tables { table: dir.path().join("j.chunks"), journal: dir.path().join("j.packs.journal") };
        let id = |n: u8| ChunkId([n; 16]);
        let line = |pack: &str, n: u8| {
            let entry = JournalEntry {
                pack: ObjectRef { key: pack.into(), len: 10, hash: "h".into() },
                segments: vec![JournalSegment { at: 0, len: 10, hash: format!("s{n}"), chunks: vec![(id(n), 5)] }],
            };
            serde_json::to_string(&entry).unwrap() + "\n"
        };
        std::fs::write(&tables.table, line("packs/a", 1) + "{cut by a cra").unwrap();
        std::fs::write(&tables.journal, line("packs/b", 2)).unwrap();
        let known = tables.read().unwrap();
        for n in [1, 2] {
            let loc = known.get(&id(n)).unwrap().expect("a chunk of the old table or the journal");
            assert_eq!(loc.offset, 5);
            assert_eq!(known.segments[loc.segment as usize].hash, format!("s{n}"));
        }
        assert_eq!(known.get(&id(3)).unwrap(), None);
    }
}
