//! The chunk table of the last committed snapshot, on disk: what the next
//! export looks up, chunk by chunk, without holding it in memory.
//!
//! ```text
//! "BSCHNK01"  u64 LE header length  header (JSON: packs, segments)
//! records, sorted by id: id (16 bytes)  segment (u32 LE)  offset (u32 LE)
//! ```
//!
//! The packs and segments (one per MiB of plaintext) are read into memory;
//! the records (24 bytes per chunk) stay in the file. At open, one pass over
//! them checks their order and builds a fan-out of the ids' leading bits
//! (4 bytes per 16 records), so that a lookup reads one small range of the
//! file with one `pread`, served by the page cache and not counted in the
//! agent's memory.
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;

use bascule_core::object::ObjectRef;
use serde::{Deserialize, Serialize};

use crate::chunk_id::ChunkId;

pub(super) const MAGIC: &[u8; 8] = b"BSCHNK01";
pub(super) const RECORD: usize = 24;

/// Where a chunk lies: a position in a table of segments, and its offset in
/// that segment's plaintext.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Loc {
    pub segment: u32,
    pub offset: u32,
}

/// The header: the packs, and each segment as (pack position, at, len, hash).
#[derive(Serialize, Deserialize, Default)]
pub(super) struct Header {
    pub packs: Vec<ObjectRef>,
    pub segments: Vec<(u32, u64, u32, String)>,
}

pub(super) fn encode(id: &ChunkId, loc: Loc) -> [u8; RECORD] {
    let mut r = [0u8; RECORD];
    r[..16].copy_from_slice(&id.0);
    r[16..20].copy_from_slice(&loc.segment.to_le_bytes());
    r[20..].copy_from_slice(&loc.offset.to_le_bytes());
    r
}

pub(super) fn decode(r: &[u8]) -> (ChunkId, Loc) {
    let id = ChunkId(r[..16].try_into().expect("16 bytes"));
    let segment = u32::from_le_bytes(r[16..20].try_into().expect("4 bytes"));
    let offset = u32::from_le_bytes(r[20..24].try_into().expect("4 bytes"));
    (id, Loc { segment, offset })
}

/// Writes a table: the header, then `records` (already sorted by id).
pub(super) fn write(
    out: &mut dyn Write,
    header: &Header,
    records: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let h = serde_json::to_vec(header)?;
    out.write_all(MAGIC)?;
    out.write_all(&(h.len() as u64).to_le_bytes())?;
    out.write_all(&h)?;
    records(out)
}

/// Whether the file begins as a table of this format (older agents wrote
/// JSON lines).
pub(super) fn is_table(file: &std::fs::File) -> std::io::Result<bool> {
    let mut magic = [0u8; 8];
    let n = file.read_at(&mut magic, 0)?;
    Ok(n == 8 && &magic == MAGIC)
}

/// The record of `id` among `count` records sorted by id, `record(i)`
/// giving the i-th (from memory or from a file).
pub(super) fn search(
    count: u64,
    id: &ChunkId,
    mut record: impl FnMut(u64) -> std::io::Result<[u8; RECORD]>,
) -> std::io::Result<Option<Loc>> {
    let (mut lo, mut hi) = (0, count);
    while lo < hi {
        let mid = (lo + hi) / 2;
        let r = record(mid)?;
        match r[..16].cmp(&id.0[..]) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => return Ok(Some(decode(&r).1)),
        }
    }
    Ok(None)
}

/// An open table: its header in memory, its records on disk.
pub(super) struct OnDisk {
    file: std::fs::File,
    records_at: u64,
    /// Leading bits of the id that index `fanout`.
    bits: u32,
    /// `fanout[b]`: the first record whose id's leading bits are `b` or more.
    fanout: Vec<u32>,
}

/// The leading `bits` bits of an id.
fn bucket(id: &ChunkId, bits: u32) -> usize {
    if bits == 0 {
        return 0;
    }
    (u64::from_be_bytes(id.0[..8].try_into().expect("8 bytes")) >> (64 - bits)) as usize
}

impl OnDisk {
    /// Opens a table; `None` (with the reason) when the file is not a whole
    /// table of this format: it is then not used, and the next export
    /// uploads what it cannot find.
    pub fn open(file: std::fs::File) -> std::io::Result<Result<(OnDisk, Header), String>> {
        if !is_table(&file)? {
            return Ok(Err("not a chunk table".into()));
        }
        let mut len = [0u8; 8];
        file.read_exact_at(&mut len, 8)?;
        let header_len = u64::from_le_bytes(len);
        let size = file.metadata()?.len();
        if header_len > size.saturating_sub(16) {
            return Ok(Err("its header is cut".into()));
        }
        let mut h = vec![0u8; header_len as usize];
        file.read_exact_at(&mut h, 16)?;
        let Ok(header) = serde_json::from_slice::<Header>(&h) else { return Ok(Err("its header does not parse".into())) };
        let records_at = 16 + header_len;
        let bytes = size - records_at;
        if bytes % RECORD as u64 != 0 || bytes / RECORD as u64 > u64::from(u32::MAX) {
            return Ok(Err("its records are cut".into()));
        }
        let count = bytes / RECORD as u64;
        // about 16 records per bucket
        let bits = (64 - (count / 16).leading_zeros()).min(24);
        let mut fanout = vec![0u32; (1usize << bits) + 1];
        let mut reader = std::io::BufReader::with_capacity(1 << 16, &file);
        std::io::Seek::seek(&mut reader, std::io::SeekFrom::Start(records_at))?;
        let mut last: Option<ChunkId> = None;
        let mut r = [0u8; RECORD];
        for i in 0..count as u32 {
            reader.read_exact(&mut r)?;
            let (id, loc) = decode(&r);
            if last.is_some_and(|l| l.0 >= id.0) {
                return Ok(Err("its records are not in order".into()));
            }
            if loc.segment as usize >= header.segments.len() {
                return Ok(Err("a record names a segment it does not list".into()));
            }
            last = Some(id);
            fanout[bucket(&id, bits) + 1] = i + 1;
        }
        // empty buckets start where the one before ended
        for b in 1..fanout.len() {
            fanout[b] = fanout[b].max(fanout[b - 1]);
        }
        drop(reader);
        Ok(Ok((OnDisk { file, records_at, bits, fanout }, header)))
    }

    /// Where the table says `id` lies.
    pub fn get(&self, id: &ChunkId) -> std::io::Result<Option<Loc>> {
        let b = bucket(id, self.bits);
        let (from, to) = (self.fanout[b] as usize, self.fanout[b + 1] as usize);
        if from == to {
            return Ok(None);
        }
        // one read of the bucket (on the stack: buckets hold about 16 records)
        let (mut small, mut large) = ([0u8; 64 * RECORD], Vec::new());
        let n = (to - from) * RECORD;
        let buf = if n <= small.len() {
            &mut small[..n]
        } else {
            large.resize(n, 0);
            &mut large[..]
        };
        self.file.read_exact_at(buf, self.records_at + (from * RECORD) as u64)?;
        let buf = &*buf;
        search((to - from) as u64, id, |i| Ok(buf[i as usize * RECORD..(i as usize + 1) * RECORD].try_into().expect("a record")))
    }
}

#[cfg(test)]
mod tests {
    use super::super::distinct::Distinct;
    use super::*;

    fn id(n: u64) -> ChunkId {
        ChunkId(blake3::hash(&n.to_le_bytes()).as_bytes()[..16].try_into().unwrap())
    }

    fn header(segments: u32) -> Header {
        let pack = ObjectRef { key: "packs/p".into(), len: 9, hash: "h".into() };
        Header { packs: vec![pack], segments: (0..segments).map(|s| (0, u64::from(s) * 100, 100, format!("s{s}"))).collect() }
    }

    /// A table of `n` chunks, spread over 3 segments.
    fn table(dir: &std::path::Path, n: u64) -> std::path::PathBuf {
        let mut d = Distinct::new(dir.join("spill"), 500);
        for i in 0..n {
            d.insert(id(i), Loc { segment: (i % 3) as u32, offset: i as u32 }).unwrap();
        }
        let path = dir.join("t.chunks");
        let mut out = Vec::new();
        write(&mut out, &header(3), |o| d.write_sorted(o).map(|_| ())).unwrap();
        std::fs::write(&path, out).unwrap();
        path
    }

    #[test]
    fn finds_every_chunk_it_holds_and_none_other() {
        let dir = tempfile::tempdir().unwrap();
        for n in [0, 1, 17, 5000] {
            let path = table(dir.path(), n);
            let (t, h) = OnDisk::open(std::fs::File::open(&path).unwrap()).unwrap().unwrap();
            assert_eq!(h.segments.len(), 3);
            for i in 0..n {
                assert_eq!(t.get(&id(i)).unwrap(), Some(Loc { segment: (i % 3) as u32, offset: i as u32 }), "chunk {i} of {n}");
            }
            for i in n..n + 2000 {
                assert_eq!(t.get(&id(i)).unwrap(), None);
            }
        }
    }

    #[test]
    fn a_damaged_table_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let path = table(dir.path(), 100);
        let whole = std::fs::read(&path).unwrap();
        let records_at = whole.len() - 100 * RECORD;
        let opened = |bytes: &[u8]| {
            std::fs::write(&path, bytes).unwrap();
            OnDisk::open(std::fs::File::open(&path).unwrap()).unwrap().err()
        };
        assert_eq!(opened(&whole), None);
        assert_eq!(opened(&whole[..whole.len() - 1]).as_deref(), Some("its records are cut"));
        let mut swapped = whole.clone();
        let (a, b) = swapped[records_at..].split_at_mut(RECORD);
        a.swap_with_slice(&mut b[..RECORD]);
        assert_eq!(opened(&swapped).as_deref(), Some("its records are not in order"));
        let mut far = whole.clone();
        far[records_at + 16..records_at + 20].copy_from_slice(&7u32.to_le_bytes());
        assert_eq!(opened(&far).as_deref(), Some("a record names a segment it does not list"));
        let mut header = whole.clone();
        header[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(opened(&header).as_deref(), Some("its header is cut"));
        assert_eq!(opened(b"{\"pack\":1}\n").as_deref(), Some("not a chunk table"));
    }
}
