//! Entry points for the fuzz targets: the scanners that follow a source's
//! stream (a pg_dump archive, a base backup's tar) fed arbitrary bytes in
//! pieces of any size.
#![doc(hidden)]

use super::Scan;

/// A pg_dump archive stream, in pieces of `piece` bytes.
pub fn dump_stream(bytes: &[u8], piece: usize) {
    let mut s = super::dump_scan::DumpScan::default();
    bytes.chunks(piece.max(1)).for_each(|c| s.feed(c));
    let _ = s.counts();
}

/// A base backup's tar stream, in pieces of `piece` bytes.
pub fn tar_stream(bytes: &[u8], piece: usize) {
    let mut s = super::pg_basebackup::TarScan::default();
    bytes.chunks(piece.max(1)).for_each(|c| s.feed(c));
    let _ = s.facts();
}
