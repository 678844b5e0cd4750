//! Step 3 of a prune: WAL older than the base backup the PITR window starts
//! from (or the oldest kept base backup) goes, except the range each older
//! kept base backup needs to reach consistency.
use bascule_core::manifest::Manifest;
use bascule_core::wal::{Lsn, WalFileKind, WalName, WAL};

use super::{union, Listing, PruneReport};
use crate::tenant::Tenant;

/// The WAL segment that holds `lsn`.
fn segment_of(lsn: Lsn, segment_size: u64) -> u64 {
    lsn.0 / segment_size.max(1)
}

/// Which WAL files stay: those at or after `cut` (timeline, segment number)
/// or on a later timeline, history files, and the `keep_ranges`.
fn wal_keeps(w: &WalName, segment_size: u64, cut: (u32, u64), keep_ranges: &[(u32, u64, u64)]) -> bool {
    if w.kind == WalFileKind::History || w.timeline > cut.0 {
        return true;
    }
    let pos = w.segment_number(segment_size);
    pos >= cut.1 || keep_ranges.iter().any(|(tl, from, to)| w.timeline == *tl && (*from..=*to).contains(&pos))
}

/// Puts the WAL files before the cut of base backup `base` in `report.deleted`.
pub(super) async fn choose(
    t: &Tenant,
    base: &Manifest,
    remaining: &[&Manifest],
    wal_lists: &[Listing],
    report: &mut PruneReport,
) -> anyhow::Result<()> {
    let Some(range) = base.wal.as_ref() else { return Ok(()) };
    let wal = union(wal_lists);
    // the segment size, from the first segment record that verifies
    let mut segment_size = None;
    for w in wal.keys().filter_map(|k| bascule_core::wal::record_name(k)).filter(|w| w.kind == WalFileKind::Segment) {
        match t.wal_record(&w, 0).await {
            Ok((record, _)) => {
                segment_size = Some(record.size);
                break;
            }
            Err(e) => tracing::warn!(tenant = %t.name, wal = %w.name, error = %e, "A WAL record that verifies nowhere is passed over"),
        }
    }
    let Some(segment_size) = segment_size else { return Ok(()) };
    let cut = (range.timeline, segment_of(range.start, segment_size));
    // older kept base backups keep the WAL that makes them consistent
    let ranges: Vec<(u32, u64, u64)> = remaining
        .iter()
        .filter_map(|m| m.wal.as_ref())
        .map(|w| (w.timeline, segment_of(w.start, segment_size), segment_of(w.stop, segment_size)))
        .collect();
    report.wal_from = Some(format!("timeline {} from LSN {} (base backup {})", range.timeline, range.start, base.name));
    for (key, (bytes, _)) in &wal {
        let name = key.strip_prefix(WAL).and_then(|r| r.split_once('/')).map(|(_, n)| n.trim_end_matches(".rec"));
        let Some(w) = name.and_then(WalName::parse) else { continue };
        if !wal_keeps(&w, segment_size, cut, &ranges) {
            report.deleted.push((key.clone(), *bytes));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_keeps_history_later_timelines_the_cut_and_the_ranges() {
        let seg = 16 << 20;
        let w = |n: &str| WalName::parse(n).unwrap();
        let cut = (2, 0x10);
        let ranges = [(1u32, 0x4u64, 0x5u64)];
        assert!(wal_keeps(&w("00000001.history"), seg, cut, &ranges));
        assert!(wal_keeps(&w("000000030000000000000001"), seg, cut, &ranges), "a later timeline");
        assert!(wal_keeps(&w("000000020000000000000010"), seg, cut, &ranges), "the cut's own segment");
        assert!(!wal_keeps(&w("00000002000000000000000F"), seg, cut, &ranges), "before the cut");
        assert!(wal_keeps(&w("000000010000000000000005"), seg, cut, &ranges), "an older kept base backup's range");
        assert!(!wal_keeps(&w("000000010000000000000006"), seg, cut, &ranges));
        assert!(!wal_keeps(&w("000000010000000000000003.00000028.backup"), seg, cut, &ranges));
    }
}
