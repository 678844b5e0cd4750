//! Entry points for the fuzz targets: the scanners that follow a source's
//! stream (a pg_dump archive, a base backup's tar) fed arbitrary bytes in
//! pieces of any size.
#![doc(hidden)]

use super::Scan;

/// A pg_dump archive stream, in pieces of `piece` bytes: scanned, and
/// with its roles renamed (`--map-role`).
pub fn dump_stream(bytes: &[u8], piece: usize) {
    let mut s = bascule_core::postgres::dump::DumpScan::default();
    bytes.chunks(piece.max(1)).for_each(|c| s.feed(c));
    let _ = s.counts();
    let _ = s.roles();
    let map = [("mairie".to_string(), "x".to_string()), ("bascule".to_string(), "\"y\"".to_string())].into();
    let mut r = bascule_core::postgres::dump::RoleMap::new(map);
    for c in bytes.chunks(piece.max(1)) {
        if r.feed(c.to_vec()).is_err() {
            return;
        }
    }
    let _ = r.finish();
}

/// A base backup's tar stream, in pieces of `piece` bytes.
pub fn tar_stream(bytes: &[u8], piece: usize) {
    let mut s = super::pg_basebackup::TarScan::default();
    bytes.chunks(piece.max(1)).for_each(|c| s.feed(c));
    let _ = s.facts();
}
