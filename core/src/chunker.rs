//! Content-defined chunking (FastCDC 2020) of a source stream.
use std::io::Read;

use serde::{Deserialize, Serialize};

/// Chunk size bounds. The defaults come from measurements on pg_dump streams
/// after a day of activity (see the README): small chunks find far more of
/// yesterday's bytes, because PostgreSQL scatters a day's writes over free
/// space in every table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkerParams {
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
}

impl Default for ChunkerParams {
    fn default() -> Self {
        ChunkerParams { min_size: 16 * 1024, avg_size: 64 * 1024, max_size: 256 * 1024 }
    }
}

impl ChunkerParams {
    pub fn validate(&self) -> Result<(), String> {
        use fastcdc::v2020::{AVERAGE_MAX, AVERAGE_MIN, MAXIMUM_MAX, MAXIMUM_MIN, MINIMUM_MAX, MINIMUM_MIN};
        let ok = (MINIMUM_MIN..=MINIMUM_MAX).contains(&self.min_size)
            && (AVERAGE_MIN..=AVERAGE_MAX).contains(&self.avg_size)
            && (MAXIMUM_MIN..=MAXIMUM_MAX).contains(&self.max_size)
            && self.min_size < self.avg_size
            && self.avg_size < self.max_size;
        if ok {
            Ok(())
        } else {
            Err(format!(
                "chunk sizes must satisfy {MINIMUM_MIN} <= min < avg < max <= {MAXIMUM_MAX} (got {}/{}/{})",
                self.min_size, self.avg_size, self.max_size
            ))
        }
    }

    /// Iterates over the chunks of `source`. Memory: one buffer of `max_size`.
    pub fn chunks<R: Read>(&self, source: R) -> impl Iterator<Item = std::io::Result<Vec<u8>>> {
        fastcdc::v2020::StreamCDC::new(source, self.min_size, self.avg_size, self.max_size).map(|r| {
            r.map(|c| c.data).map_err(|e| match e {
                fastcdc::v2020::Error::IoError(io) => io,
                other => std::io::Error::other(other.to_string()),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_reassemble_and_respect_bounds() {
        let mut data = Vec::new();
        let mut x: u64 = 1;
        for _ in 0..2_000_000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            data.push((x >> 56) as u8);
        }
        let p = ChunkerParams::default();
        let chunks: Vec<_> = p.chunks(&data[..]).collect::<Result<_, _>>().unwrap();
        assert_eq!(chunks.concat(), data);
        for c in &chunks[..chunks.len() - 1] {
            assert!(c.len() >= p.min_size as usize && c.len() <= p.max_size as usize);
        }
        // an insertion near the start changes only the chunks around it
        let mut edited = data.clone();
        edited.splice(1000..1000, b"INSERT".iter().copied());
        let again: Vec<_> = p.chunks(&edited[..]).collect::<Result<_, _>>().unwrap();
        let old: std::collections::HashSet<_> = chunks.iter().collect();
        let shared = again.iter().filter(|c| old.contains(c)).count();
        assert!(shared + 2 >= chunks.len(), "{shared} of {}", chunks.len());
    }

    #[test]
    fn bad_params() {
        assert!(ChunkerParams { min_size: 10, avg_size: 5, max_size: 1 }.validate().is_err());
        assert!(ChunkerParams::default().validate().is_ok());
    }
}
