//! The chunks of the snapshot being exported, each once, with where it lies:
//! what recognises a chunk repeated in the stream, and what becomes the next
//! run's chunk table.
//!
//! The most recent ones are in a map of bounded size; when it fills, they
//! are sorted and appended to a spill file as one sorted run, with a Bloom
//! filter in memory (2 bytes per chunk, one cache line per lookup) so that a
//! chunk never seen costs no read of the file. The spill file is unlinked as
//! soon as it is open: nothing is left behind, even by a killed run. At the
//! commit the runs are merged into the chunk table.
use std::collections::BinaryHeap;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use super::table::{encode, search, Loc, RECORD};
use crate::chunk_id::{ChunkId, IdMap};

/// Chunks held in the map before a spill: the map's table then holds
/// 2^16 slots of 24 bytes (a map is at most 7/8 full).
pub(super) const RECENT: usize = (1 << 16) / 8 * 7;

/// Bits of Bloom filter per chunk, and bits set per chunk (in one 512-bit block).
const BLOOM_BITS: usize = 16;
const BLOOM_PROBES: u32 = 7;

pub(super) struct Distinct {
    limit: usize,
    recent: IdMap<Loc>,
    /// Where the spill file is made (then unlinked) at the first spill.
    spill_path: PathBuf,
    spill: Option<std::fs::File>,
    runs: Vec<Run>,
}

/// A sorted run in the spill file.
struct Run {
    at: u64,
    count: u64,
    /// Blocks of 512 bits.
    bloom: Vec<[u64; 8]>,
}

fn halves(id: &ChunkId) -> (u64, u64) {
    (u64::from_le_bytes(id.0[..8].try_into().expect("8 bytes")), u64::from_le_bytes(id.0[8..].try_into().expect("8 bytes")))
}

impl Run {
    fn block(&self, id: &ChunkId) -> (usize, u64) {
        let (a, b) = halves(id);
        ((a % self.bloom.len() as u64) as usize, b)
    }

    fn bits(b: u64) -> impl Iterator<Item = usize> {
        (0..BLOOM_PROBES).map(move |i| ((b >> (9 * i)) & 511) as usize)
    }

    fn add(&mut self, id: &ChunkId) {
        let (block, b) = self.block(id);
        for bit in Self::bits(b) {
            self.bloom[block][bit / 64] |= 1 << (bit % 64);
        }
    }

    fn may_hold(&self, id: &ChunkId) -> bool {
        let (block, b) = self.block(id);
        Self::bits(b).all(|bit| self.bloom[block][bit / 64] & (1 << (bit % 64)) != 0)
    }
}

impl Distinct {
    /// `spill_path`: a file name in the agent's state directory (made at the
    /// first spill, unlinked at once).
    pub fn new(spill_path: PathBuf, limit: usize) -> Distinct {
        Distinct { limit, recent: IdMap::with_capacity_and_hasher(limit, Default::default()), spill_path, spill: None, runs: Vec::new() }
    }

    /// Where this snapshot already placed `id`.
    pub fn get(&self, id: &ChunkId) -> std::io::Result<Option<Loc>> {
        if let Some(loc) = self.recent.get(id) {
            return Ok(Some(*loc));
        }
        let Some(file) = &self.spill else { return Ok(None) };
        for run in self.runs.iter().filter(|r| r.may_hold(id)) {
            // one record read at a time
            let found = search(run.count, id, |i| {
                let mut r = [0u8; RECORD];
                file.read_exact_at(&mut r, run.at + i * RECORD as u64).map(|()| r)
            })?;
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    /// Records where `id` lies (a chunk recorded twice is kept once).
    pub fn insert(&mut self, id: ChunkId, loc: Loc) -> std::io::Result<()> {
        self.recent.entry(id).or_insert(loc);
        if self.recent.len() >= self.limit {
            self.spill_recent()?;
        }
        Ok(())
    }

    fn sorted_recent(&mut self) -> Vec<(ChunkId, Loc)> {
        let mut all: Vec<(ChunkId, Loc)> = self.recent.drain().collect();
        all.sort_unstable_by_key(|(id, _)| id.0);
        all
    }

    fn spill_recent(&mut self) -> std::io::Result<()> {
        let all = self.sorted_recent();
        let file = match &self.spill {
            Some(f) => f,
            None => {
                // a file left by a killed run (or a link planted there) is unlinked, never followed
                let _ = std::fs::remove_file(&self.spill_path);
                use std::os::unix::fs::OpenOptionsExt;
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                    .open(&self.spill_path)?;
                std::fs::remove_file(&self.spill_path)?;
                self.spill.insert(f)
            }
        };
        let at = self.runs.last().map_or(0, |r| r.at + r.count * RECORD as u64);
        let mut bytes = Vec::with_capacity(all.len() * RECORD);
        let mut run = Run { at, count: all.len() as u64, bloom: vec![[0; 8]; (all.len() * BLOOM_BITS).div_ceil(512).max(1)] };
        for (id, loc) in &all {
            bytes.extend_from_slice(&encode(id, *loc));
            run.add(id);
        }
        file.write_all_at(&bytes, at)?;
        self.runs.push(run);
        Ok(())
    }

    /// Writes every chunk once, sorted by id: the records of a chunk table.
    pub fn write_sorted(mut self, out: &mut dyn std::io::Write) -> std::io::Result<u64> {
        let recent = self.sorted_recent();
        let mut cursors: Vec<Cursor> =
            self.runs.iter().map(|r| Cursor { next: r.at, end: r.at + r.count * RECORD as u64, buf: Vec::new(), pos: 0 }).collect();
        let mut heap = BinaryHeap::new();
        let file = self.spill.as_ref();
        for (i, c) in cursors.iter_mut().enumerate() {
            if let Some(r) = c.peek(file.expect("a spill file for a run"))? {
                heap.push(std::cmp::Reverse((r, i)));
            }
        }
        let mut recent = recent.into_iter().peekable();
        let mut last: Option<[u8; 16]> = None;
        let mut written = 0;
        loop {
            let from_run = heap.peek().map(|std::cmp::Reverse((r, _))| *r);
            let from_recent = recent.peek().map(|(id, loc)| encode(id, *loc));
            let next = match (from_run, from_recent) {
                (None, None) => break,
                (Some(r), Some(m)) if r[..16] <= m[..16] => None,
                (Some(_), None) => None,
                (_, Some(m)) => {
                    recent.next();
                    Some(m)
                }
            };
            let record = match next {
                Some(m) => m,
                None => {
                    let std::cmp::Reverse((r, i)) = heap.pop().expect("a run's record");
                    cursors[i].pos += RECORD;
                    if let Some(n) = cursors[i].peek(file.expect("a spill file for a run"))? {
                        heap.push(std::cmp::Reverse((n, i)));
                    }
                    r
                }
            };
            let id: [u8; 16] = record[..16].try_into().expect("16 bytes");
            if last != Some(id) {
                out.write_all(&record)?;
                written += 1;
                last = Some(id);
            }
        }
        Ok(written)
    }
}

/// Reads a run ahead, 64 KiB at a time.
struct Cursor {
    next: u64,
    end: u64,
    buf: Vec<u8>,
    pos: usize,
}

impl Cursor {
    fn peek(&mut self, file: &std::fs::File) -> std::io::Result<Option<[u8; RECORD]>> {
        if self.pos == self.buf.len() {
            let n = (self.end - self.next).min((RECORD * 2730) as u64) as usize;
            if n == 0 {
                return Ok(None);
            }
            self.buf.resize(n, 0);
            file.read_exact_at(&mut self.buf, self.next)?;
            self.next += n as u64;
            self.pos = 0;
        }
        Ok(Some(self.buf[self.pos..self.pos + RECORD].try_into().expect("a record")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> ChunkId {
        ChunkId(blake3::hash(&n.to_le_bytes()).as_bytes()[..16].try_into().unwrap())
    }

    #[test]
    fn finds_what_it_spilled_and_writes_each_chunk_once_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let spill = dir.path().join("spill");
        let mut d = Distinct::new(spill.clone(), 100);
        for n in 0..1000u64 {
            d.insert(id(n), Loc { segment: n as u32, offset: 7 }).unwrap();
            // recorded twice: kept once
            if n % 3 == 0 {
                d.insert(id(n), Loc { segment: n as u32, offset: 7 }).unwrap();
            }
        }
        assert!(d.runs.len() >= 9, "spilled {} runs", d.runs.len());
        assert!(!spill.exists(), "the spill file is unlinked once open");
        for n in 0..1000u64 {
            assert_eq!(d.get(&id(n)).unwrap(), Some(Loc { segment: n as u32, offset: 7 }), "chunk {n}");
        }
        for n in 1000..3000u64 {
            assert_eq!(d.get(&id(n)).unwrap(), None, "chunk {n} was never recorded");
        }
        let mut out = Vec::new();
        assert_eq!(d.write_sorted(&mut out).unwrap(), 1000);
        let records: Vec<(ChunkId, Loc)> = out.chunks_exact(RECORD).map(super::super::table::decode).collect();
        assert_eq!(records.len(), 1000);
        assert!(records.windows(2).all(|w| w[0].0 .0 < w[1].0 .0), "records sorted by id, each once");
        let mut segments: Vec<u32> = records.iter().map(|r| r.1.segment).collect();
        segments.sort();
        assert_eq!(segments, (0..1000).collect::<Vec<u32>>());
    }
}
