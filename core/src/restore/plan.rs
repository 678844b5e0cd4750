//! Read planning: the stream's chunks grouped into ranged reads of the
//! packs, and the checks each read's bytes pass before they are used.
// Parses what a provider (or a source) serves: total, no panic (see the
// threat model in the README).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing))]
use crate::keys::Identities;
use crate::manifest::{Index, Manifest};
use crate::{hash_hex, seal, Error};

/// Plaintext bytes of chunks one read may bring into memory (reads run
/// `concurrency` at a time, so memory stays bounded whatever the size).
const READ_PLAIN_MAX: u64 = 4 << 20;
/// Segments one read may decrypt.
const READ_SEGMENTS_MAX: usize = 16;
/// Bytes of unneeded ciphertext a read may skip over rather than split.
const READ_GAP_MAX: u64 = 64 << 10;

/// A sealed segment inside a read, and the chunks wanted from it.
#[derive(Debug, PartialEq)]
pub(super) struct SegmentRead {
    /// Position in [`Index::segments`].
    segment: u32,
    /// Offset of the segment in the read.
    at: u64,
    /// (offset in the segment's plaintext, length) of each chunk wanted, in stream order.
    parts: Vec<(u32, u32)>,
}

/// One ranged read of a pack: consecutive segments, in stream order.
#[derive(Debug, PartialEq)]
pub(super) struct Read {
    pub(super) object: u32,
    pub(super) start: u64,
    pub(super) end: u64,
    plain: u64,
    segments: Vec<SegmentRead>,
}

impl Read {
    pub(super) fn chunks(&self) -> usize {
        self.segments.iter().map(|s| s.parts.len()).sum()
    }
}

/// Groups the stream's chunks into ranged reads: chunks of one segment share
/// one decryption, and segments lying close together in one pack share one
/// request, so a first snapshot restores with about one request per pack.
pub(super) fn plan_reads(index: &Index, key: &str) -> crate::Result<Vec<Read>> {
    plan_reads_of(index, index.chunks(), key)
}

/// [`plan_reads`] for some consecutive chunks of the stream.
pub(super) fn plan_reads_of(index: &Index, chunks: impl Iterator<Item = crate::manifest::ChunkAt>, key: &str) -> crate::Result<Vec<Read>> {
    let mut reads: Vec<Read> = Vec::new();
    for c in chunks {
        let s = index
            .segments
            .get(c.segment as usize)
            .ok_or_else(|| Error::Body { key: key.into(), reason: "a chunk points past the segments".into() })?;
        let end = s.at.saturating_add(s.len as u64);
        if let Some(r) = reads.last_mut().filter(|r| r.object == s.pack && r.plain + c.len as u64 <= READ_PLAIN_MAX) {
            if let Some(last) = r.segments.last_mut().filter(|l| l.segment == c.segment) {
                last.parts.push((c.offset, c.len));
                r.plain += c.len as u64;
                continue;
            }
            if s.at >= r.end && s.at - r.end <= READ_GAP_MAX && r.segments.len() < READ_SEGMENTS_MAX {
                r.segments.push(SegmentRead { segment: c.segment, at: s.at - r.start, parts: vec![(c.offset, c.len)] });
                r.end = end;
                r.plain += c.len as u64;
                continue;
            }
        }
        reads.push(Read {
            object: s.pack,
            start: s.at,
            end,
            plain: c.len as u64,
            segments: vec![SegmentRead { segment: c.segment, at: 0, parts: vec![(c.offset, c.len)] }],
        });
    }
    Ok(reads)
}

/// Checks each segment of one read against the ciphertext hash of the
/// authenticated index before decrypting it; returns the wanted chunks end to
/// end and the plaintext hash of each (for the stream hash).
pub(super) fn open_read(
    read: &Read,
    bytes: &[u8],
    key: &str,
    provider: &str,
    m: &Manifest,
    index: &Index,
    ids: &Identities,
) -> crate::Result<(Vec<u8>, Vec<blake3::Hash>)> {
    let max = m.segment_size.saturating_add(m.chunker.max_size as u64) as usize;
    let mut out = Vec::with_capacity(read.plain as usize);
    let mut hashes = Vec::with_capacity(read.chunks());
    for sr in &read.segments {
        let seg = index
            .segments
            .get(sr.segment as usize)
            .ok_or_else(|| Error::Body { key: key.into(), reason: "a read points past the segments".into() })?;
        let what = format!("{key} (segment at byte {})", seg.at);
        let sealed = bytes.get(sr.at as usize..sr.at.saturating_add(seg.len as u64) as usize).unwrap_or_default();
        let actual = hash_hex(sealed);
        if sealed.len() != seg.len as usize || actual != seg.hash {
            return Err(Error::CiphertextHash { key: what, provider: provider.into(), expected: seg.hash.clone(), actual });
        }
        let plain = seal::open(sealed, ids, max, &what, &m.recipients)?;
        for &(offset, len) in &sr.parts {
            let chunk = plain
                .get(offset as usize..offset as usize + len as usize)
                .ok_or_else(|| Error::Open { key: what.clone(), reason: "the index points past the segment's plaintext".into() })?;
            hashes.push(blake3::hash(chunk));
            out.extend_from_slice(chunk);
        }
    }
    Ok((out, hashes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Extent, Segment};

    /// chunks: (pack, segment at, segment len, offset in segment, chunk len)
    fn index(entries: &[(u32, u64, u32, u32, u32)]) -> Index {
        let mut segments: Vec<Segment> = Vec::new();
        let mut extents = Vec::new();
        for &(pack, at, len, offset, chunk) in entries {
            let pos = segments.iter().position(|s| s.pack == pack && s.at == at).unwrap_or_else(|| {
                segments.push(Segment { pack, at, len, hash: String::new() });
                segments.len() - 1
            });
            extents.push(Extent { segment: pos as u32, offset, lens: vec![chunk] });
        }
        Index {
            format: crate::manifest::FORMAT,
            segments,
            extents,
            stream_hash: String::new(),
            row_counts: Default::default(),
            owners: Vec::new(),
            grantees: Vec::new(),
            archive: None,
            source: Default::default(),
        }
    }

    fn plan_reads_ok(index: &Index) -> Vec<Read> {
        plan_reads(index, "i").unwrap()
    }

    #[test]
    fn chunks_of_a_segment_share_a_read_and_order_is_kept() {
        // chunks 0,1 in segment A (p0 @0), chunk 2 in segment B (p0 @100, contiguous),
        // chunk 3 in p1, then chunk 0 again (a repeated chunk)
        let reads =
            plan_reads_ok(&index(&[(0, 0, 100, 0, 10), (0, 0, 100, 10, 10), (0, 100, 50, 0, 10), (1, 0, 70, 0, 10), (0, 0, 100, 0, 10)]));
        assert_eq!(reads.len(), 3);
        assert_eq!((reads[0].object, reads[0].start, reads[0].end), (0, 0, 150));
        assert_eq!(reads[0].segments[0].parts, vec![(0, 10), (10, 10)]);
        assert_eq!((reads[0].segments[1].segment, reads[0].segments[1].at), (1, 100));
        assert_eq!((reads[1].object, reads[1].start, reads[1].end), (1, 0, 70));
        assert_eq!(reads[2].segments[0].parts, vec![(0, 10)]);
        assert_eq!(reads.iter().map(Read::chunks).sum::<usize>(), 5);
    }

    #[test]
    fn reads_are_bounded() {
        let n = 100u32;
        let entries: Vec<_> = (0..n).map(|i| (0, i as u64 * 10, 10, 0, 1 << 20)).collect();
        let reads = plan_reads_ok(&index(&entries));
        assert!(reads.iter().all(|r| r.plain <= READ_PLAIN_MAX && r.segments.len() <= READ_SEGMENTS_MAX));
        assert_eq!(reads.iter().map(Read::chunks).sum::<usize>(), n as usize);
    }
}
