//! One data block of a custom archive, read as it streams in: a table's
//! `COPY` text, or large objects.
// Parses what a provider served (after its checks): total, no panic.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing))]
use super::{decode_int, BLK_BLOBS, BLK_DATA};

/// Reads one data block (as [`crate::manifest::DataBlock`] places it) as
/// it streams: its framing checked, its content handed on.
pub struct BlockReader {
    int_size: usize,
    id: i64,
    large_objects: bool,
    state: BlockState,
    int: Vec<u8>,
}

/// What a data block holds, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Part {
    /// `COPY` text of a table's rows: these bytes of the input.
    Rows(std::ops::Range<usize>),
    /// A large object begins: its oid.
    Object(u32),
    /// The next bytes of the current large object.
    Bytes(std::ops::Range<usize>),
}

#[derive(Debug, PartialEq)]
enum BlockState {
    Kind,
    Id,
    Oid,
    Len,
    Piece(u64),
    End,
}

impl BlockReader {
    /// A reader of the data block of entry `id` (`large_objects`: a block
    /// of large objects, else a table's rows).
    pub fn new(int_size: usize, id: i64, large_objects: bool) -> BlockReader {
        BlockReader { int_size, id, large_objects, state: BlockState::Kind, int: Vec::new() }
    }

    /// The next bytes of the block: what they hold, as parts of `bytes`.
    pub fn feed(&mut self, bytes: &[u8], mut out: impl FnMut(Part)) -> Result<(), String> {
        let mut at = 0usize;
        while let Some(rest) = bytes.get(at..).filter(|r| !r.is_empty()) {
            match self.state {
                BlockState::End => return Err(format!("{} bytes after the end of the data block of entry {}", rest.len(), self.id)),
                BlockState::Kind => {
                    let want = if self.large_objects { BLK_BLOBS } else { BLK_DATA };
                    if rest.first() != Some(&want) {
                        return Err(format!("the data of entry {} does not start with a block of its kind", self.id));
                    }
                    at += 1;
                    self.state = BlockState::Id;
                }
                BlockState::Piece(left) => {
                    let n = left.min(rest.len() as u64) as usize;
                    out(if self.large_objects { Part::Bytes(at..at + n) } else { Part::Rows(at..at + n) });
                    at += n;
                    self.state = if left == n as u64 { BlockState::Len } else { BlockState::Piece(left - n as u64) };
                }
                BlockState::Id | BlockState::Oid | BlockState::Len => {
                    let size = 1 + self.int_size;
                    let n = size.saturating_sub(self.int.len()).min(rest.len());
                    self.int.extend_from_slice(rest.get(..n).unwrap_or_default());
                    at += n;
                    if self.int.len() < size {
                        continue;
                    }
                    let v = decode_int(&std::mem::take(&mut self.int)).ok_or("an integer too large in a data block")?;
                    self.state = match self.state {
                        BlockState::Id if v != self.id => {
                            return Err(format!("the data block of entry {} says it is entry {v}'s", self.id))
                        }
                        BlockState::Id if self.large_objects => BlockState::Oid,
                        BlockState::Id => BlockState::Len,
                        BlockState::Oid if v == 0 => BlockState::End,
                        BlockState::Oid => {
                            out(Part::Object(u32::try_from(v).map_err(|_| format!("a large object numbered {v}"))?));
                            BlockState::Len
                        }
                        _ if v == 0 && self.large_objects => BlockState::Oid,
                        _ if v == 0 => BlockState::End,
                        _ if v > 0 => BlockState::Piece(v as u64),
                        _ => return Err(format!("a data piece of length {v}")),
                    };
                }
            }
        }
        Ok(())
    }

    /// At the end of the block's bytes: an error unless the block ended there.
    pub fn finish(&self) -> Result<(), String> {
        if self.state == BlockState::End {
            Ok(())
        } else {
            Err(format!("the data block of entry {} is cut short", self.id))
        }
    }
}
