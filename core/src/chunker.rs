//! Content-defined chunking (FastCDC 2020) of a source stream.
use std::io::Read;

use serde::{Deserialize, Serialize};

/// Chunk size bounds. The defaults come from measurements on pg_dump streams
/// after a day of activity (`./scripts/bench.sh`, and the `dedup` example on
/// two dumps): PostgreSQL scatters a day's updates over every page of a
/// table, so small chunks find far more of yesterday's bytes; the index
/// costs a few bytes per chunk, so small chunks are cheap to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkerParams {
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
}

impl Default for ChunkerParams {
    fn default() -> Self {
        ChunkerParams { min_size: 4 * 1024, avg_size: 8 * 1024, max_size: 32 * 1024 }
    }
}

/// Consecutive chunks of the stream, end to end in one buffer.
pub struct Batch {
    pub data: Vec<u8>,
    pub lens: Vec<u32>,
    /// Where its buffer goes back once the batch is dropped.
    spare: Option<std::sync::Arc<Spare>>,
}

/// Buffers of dropped batches, taken again by the next ones: the stream
/// goes through the same few buffers, with no allocation, no page to fault
/// in, and no hole left in the heap by buffers freed on other threads.
#[derive(Default)]
struct Spare(std::sync::Mutex<Vec<Vec<u8>>>);

/// Buffers kept for reuse: as many as batches are usually in flight.
const SPARE: usize = 8;

impl Drop for Batch {
    fn drop(&mut self) {
        if let Some(spare) = &self.spare {
            let mut kept = spare.0.lock().unwrap_or_else(|e| e.into_inner());
            if kept.len() < SPARE {
                let mut data = std::mem::take(&mut self.data);
                data.clear();
                kept.push(data);
            }
        }
    }
}

impl Batch {
    /// The chunks, in order.
    pub fn chunks(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.lens.iter().scan(0usize, |at, &len| {
            let c = &self.data[*at..*at + len as usize];
            *at += len as usize;
            Some(c)
        })
    }
}

/// Chunk sizes FastCDC cannot work with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "chunk sizes must satisfy {} <= min < avg < max <= {} (got {min}/{avg}/{max})",
    fastcdc::v2020::MINIMUM_MIN,
    fastcdc::v2020::MAXIMUM_MAX
)]
pub struct BadChunkSizes {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

impl ChunkerParams {
    pub fn validate(&self) -> Result<(), BadChunkSizes> {
        use fastcdc::v2020::{AVERAGE_MAX, AVERAGE_MIN, MAXIMUM_MAX, MAXIMUM_MIN, MINIMUM_MAX, MINIMUM_MIN};
        let ok = (MINIMUM_MIN..=MINIMUM_MAX).contains(&self.min_size)
            && (AVERAGE_MIN..=AVERAGE_MAX).contains(&self.avg_size)
            && (MAXIMUM_MIN..=MAXIMUM_MAX).contains(&self.max_size)
            && self.min_size < self.avg_size
            && self.avg_size < self.max_size;
        if ok {
            Ok(())
        } else {
            Err(BadChunkSizes { min: self.min_size, avg: self.avg_size, max: self.max_size })
        }
    }

    /// Cuts `source` into chunks handed out in batches of about `batch` bytes:
    /// the bytes are read once into the batch's buffer and never moved but
    /// for the cut-off tail (less than one chunk) carried to the next batch.
    /// Memory: one buffer of `batch + max_size`.
    pub fn batches<R: Read>(&self, source: R, batch: usize) -> Batches<R> {
        Batches { source, params: *self, batch: batch.max(self.max_size as usize), tail: Vec::new(), eof: false, spare: Default::default() }
    }
}

/// See [`ChunkerParams::batches`].
pub struct Batches<R> {
    source: R,
    params: ChunkerParams,
    batch: usize,
    tail: Vec<u8>,
    eof: bool,
    spare: std::sync::Arc<Spare>,
}

impl<R: Read> Iterator for Batches<R> {
    type Item = std::io::Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.eof && self.tail.is_empty() {
            return None;
        }
        let cap = self.batch + self.params.max_size as usize;
        let reused = self.spare.0.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut data = reused.filter(|d| d.capacity() >= cap).unwrap_or_else(|| Vec::with_capacity(cap));
        data.append(&mut self.tail);
        if !self.eof {
            let want = (cap - data.len()) as u64;
            match self.source.by_ref().take(want).read_to_end(&mut data) {
                Ok(n) => self.eof = (n as u64) < want,
                Err(e) => return Some(Err(e)),
            }
        }
        if data.is_empty() {
            return None;
        }
        // A cut is decided by the bytes from the previous cut on, so cutting
        // a buffer gives the cuts of the whole stream, except for the last
        // chunk, cut by the buffer's end: unless the source ended, it goes
        // back into the next batch.
        let ChunkerParams { min_size, avg_size, max_size } = self.params;
        let mut lens = Vec::new();
        let mut end = 0;
        for c in fastcdc::v2020::FastCDC::new(&data, min_size, avg_size, max_size) {
            if !self.eof && c.offset + c.length == data.len() {
                break;
            }
            lens.push(c.length as u32);
            end = c.offset + c.length;
            if end >= self.batch {
                break;
            }
        }
        self.tail = data.split_off(end);
        Some(Ok(Batch { data, lens, spare: Some(self.spare.clone()) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(p: &ChunkerParams, data: &[u8], batch: usize) -> Vec<Vec<u8>> {
        let batches: Vec<Batch> = p.batches(data, batch).collect::<Result<_, _>>().unwrap();
        batches.iter().flat_map(|b| b.chunks().map(<[u8]>::to_vec)).collect()
    }

    fn noise(n: usize) -> Vec<u8> {
        let mut x: u64 = 1;
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (x >> 56) as u8
            })
            .collect()
    }

    #[test]
    fn chunks_reassemble_and_respect_bounds() {
        let data = noise(2_000_000);
        let p = ChunkerParams::default();
        let chunks = cut(&p, &data, 1 << 20);
        assert_eq!(chunks.concat(), data);
        for c in &chunks[..chunks.len() - 1] {
            assert!(c.len() >= p.min_size as usize && c.len() <= p.max_size as usize);
        }
        // an insertion near the start changes only the chunks around it
        let mut edited = data.clone();
        edited.splice(1000..1000, b"INSERT".iter().copied());
        let again = cut(&p, &edited, 1 << 20);
        let old: std::collections::HashSet<_> = chunks.iter().collect();
        let shared = again.iter().filter(|c| old.contains(c)).count();
        assert!(shared + 2 >= chunks.len(), "{shared} of {}", chunks.len());
    }

    #[test]
    fn batch_size_does_not_move_cuts() {
        // the cuts are those of the whole buffer, whatever the batches
        let data = noise(700_000);
        let p = ChunkerParams::default();
        let whole: Vec<Vec<u8>> = fastcdc::v2020::FastCDC::new(&data, p.min_size, p.avg_size, p.max_size)
            .map(|c| data[c.offset..c.offset + c.length].to_vec())
            .collect();
        for batch in [1, 40_000, 100_000, 1 << 20] {
            assert_eq!(cut(&p, &data, batch), whole, "batch {batch}");
        }
        // a source that hands out a few bytes per read
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = buf.len().min(self.0.len()).min(777);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let trickled: Vec<Batch> = p.batches(Trickle(&data), 64 << 10).collect::<Result<_, _>>().unwrap();
        let trickled: Vec<Vec<u8>> = trickled.iter().flat_map(|b| b.chunks().map(<[u8]>::to_vec)).collect();
        assert_eq!(trickled, whole);
        assert_eq!(p.batches(&[][..], 1 << 20).count(), 0, "an empty source has no batch");
    }

    #[test]
    fn bad_params() {
        assert!(ChunkerParams { min_size: 10, avg_size: 5, max_size: 1 }.validate().is_err());
        assert!(ChunkerParams::default().validate().is_ok());
    }
}
