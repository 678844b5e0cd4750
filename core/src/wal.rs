//! WAL archive: file names PostgreSQL archives, their order, and the signed
//! record stored next to each sealed file.
//!
//! On a provider, `wal/<timeline>/<name>` is `age(zstd(file))` (openable with
//! the stock tools) and `wal/<timeline>/<name>.rec` its signed [`WalRecord`],
//! written after it: a file counts as archived on a provider once its record is
//! there.
// Parses what a provider (or a source) serves: total, no panic (see the
// threat model in the README).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing))]
use serde::{Deserialize, Serialize};

use crate::object::ObjectRef;
use crate::signed::{Kind, Signed};

pub const WAL: &str = "wal/";
const RECORD_SUFFIX: &str = ".rec";

/// The kinds of file `archive_command` receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WalFileKind {
    /// `00000002.history`: the timeline's history, archived at a promotion.
    History,
    /// `000000010000000000000003`: a 16 MiB (by default) segment.
    Segment,
    /// `000000010000000000000003.partial`: the last, incomplete segment of a
    /// timeline a promotion left.
    Partial,
    /// `000000010000000000000003.00000028.backup`: a base backup's label.
    Backup,
}

/// A parsed WAL file name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WalName {
    pub name: String,
    pub kind: WalFileKind,
    pub timeline: u32,
    /// `(log, seg)` of segment names (zero for a history file).
    pub log: u32,
    pub seg: u32,
}

fn hex32(s: &str) -> Option<u32> {
    (s.len() == 8 && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_lowercase())).then(|| u32::from_str_radix(s, 16).ok())?
}

impl WalName {
    /// Parses a name PostgreSQL archives; `None` for anything else.
    pub fn parse(name: &str) -> Option<WalName> {
        // every name PostgreSQL archives is ASCII (and slicing below is by byte)
        if !name.is_ascii() {
            return None;
        }
        let seg_name = |s: &str| -> Option<(u32, u32, u32)> {
            if s.len() != 24 {
                return None;
            }
            Some((hex32(&s[0..8])?, hex32(&s[8..16])?, hex32(&s[16..24])?))
        };
        let (kind, (timeline, log, seg)) = if let Some(tl) = name.strip_suffix(".history") {
            (WalFileKind::History, (hex32(tl)?, 0, 0))
        } else if let Some(s) = name.strip_suffix(".partial") {
            (WalFileKind::Partial, seg_name(s)?)
        } else if let Some(s) = name.strip_suffix(".backup") {
            let (s, offset) = s.split_once('.')?;
            hex32(offset)?;
            (WalFileKind::Backup, seg_name(s)?)
        } else {
            (WalFileKind::Segment, seg_name(name)?)
        };
        Some(WalName { name: name.into(), kind, timeline, log, seg })
    }

    /// Upload and listing order: by timeline, its history first, then by
    /// position, a segment before its `.partial` or `.backup` companions.
    pub fn order_key(&self) -> (u32, bool, u32, u32, WalFileKind, &str) {
        (self.timeline, self.kind != WalFileKind::History, self.log, self.seg, self.kind, &self.name)
    }

    /// The segment's position counting from zero, for segments of `segment_size` bytes.
    pub fn segment_number(&self, segment_size: u64) -> u64 {
        let per_log = 0x1_0000_0000 / segment_size.max(1);
        self.log as u64 * per_log + self.seg as u64
    }

    /// `wal/<timeline>/<name>`: the sealed file.
    pub fn object_key(&self) -> String {
        format!("{WAL}{:08X}/{}", self.timeline, self.name)
    }

    /// `wal/<timeline>/<name>.rec`: its signed record.
    pub fn record_key(&self) -> String {
        format!("{}{RECORD_SUFFIX}", self.object_key())
    }
}

/// The WAL file name a record key names, if `key` is one.
pub fn record_name(key: &str) -> Option<WalName> {
    let rest = key.strip_prefix(WAL)?.strip_suffix(RECORD_SUFFIX)?;
    let (_, name) = rest.split_once('/')?;
    WalName::parse(name).filter(|w| w.object_key() == format!("{WAL}{rest}"))
}

/// The signed record of one archived WAL file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalRecord {
    pub format: u32,
    pub tenant: String,
    pub name: String,
    pub kind: WalFileKind,
    pub timeline: u32,
    /// Plaintext length and BLAKE3.
    pub size: u64,
    pub plain_hash: String,
    /// The sealed file: key, ciphertext length and BLAKE3.
    pub object: ObjectRef,
    pub recipients: Vec<String>,
    /// Grows by one with every record this agent signs.
    pub sequence: u64,
    /// When the agent received the file from `archive_command`.
    pub archived_at: chrono::DateTime<chrono::Utc>,
    pub host: String,
}

impl Signed for WalRecord {
    const KIND: Kind = Kind::Wal;
    const MAX_LEN: u64 = 64 << 10;

    /// The key that signed must have been valid when the file was archived.
    fn signed_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.archived_at
    }

    fn tenant(&self) -> &str {
        &self.tenant
    }

    /// `wal/<timeline>/<name>.rec`, when the record's name, kind, timeline
    /// and sealed file agree.
    fn stored_at(&self) -> Option<String> {
        let name = WalName::parse(&self.name)?;
        let agrees = name.timeline == self.timeline && name.kind == self.kind && self.object.key == name.object_key();
        agrees.then(|| name.record_key())
    }
}

impl WalRecord {
    /// Opens the record of WAL file `name` of `tenant`.
    pub fn open(bytes: &[u8], keys: &[crate::keys::TrustedKey], tenant: &str, name: &WalName) -> crate::Result<WalRecord> {
        <WalRecord as Signed>::open(bytes, keys, tenant, &name.record_key())
    }
}

/// Not a log sequence number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad LSN {0:?}: expected e.g. 0/3000060")]
pub struct BadLsn(pub String);

/// A log sequence number, `X/Y` in PostgreSQL's notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Lsn(pub u64);

impl std::str::FromStr for Lsn {
    type Err = BadLsn;
    fn from_str(s: &str) -> Result<Self, BadLsn> {
        let bad = || BadLsn(s.to_string());
        let (hi, lo) = s.trim().split_once('/').ok_or_else(bad)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| bad())?;
        Ok(Lsn(((hi as u64) << 32) | lo as u64))
    }
}

impl std::fmt::Display for Lsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

impl TryFrom<String> for Lsn {
    type Error = BadLsn;
    fn try_from(s: String) -> Result<Self, BadLsn> {
        s.parse()
    }
}

impl From<Lsn> for String {
    fn from(l: Lsn) -> String {
        l.to_string()
    }
}

/// Where a base backup starts and stops in the WAL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalRange {
    pub start: Lsn,
    pub stop: Lsn,
    pub timeline: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let s = WalName::parse("000000010000000A000000FF").unwrap();
        assert_eq!((s.kind, s.timeline, s.log, s.seg), (WalFileKind::Segment, 1, 10, 255));
        assert_eq!(s.segment_number(16 << 20), 10 * 256 + 255);
        assert_eq!(s.object_key(), "wal/00000001/000000010000000A000000FF");
        assert_eq!(record_name(&s.record_key()).unwrap(), s);
        assert_eq!(WalName::parse("00000002.history").unwrap().kind, WalFileKind::History);
        assert_eq!(WalName::parse("000000010000000000000003.partial").unwrap().kind, WalFileKind::Partial);
        assert_eq!(WalName::parse("000000010000000000000003.00000028.backup").unwrap().kind, WalFileKind::Backup);
        for bad in [
            "",
            "00000001",
            "0000000100000000000000",
            "000000010000000000000003.tmp",
            "../00000002.history",
            "0000000g.history",
            "0000000é000000000000000",
            "00000001000000000000000é",
        ] {
            assert!(WalName::parse(bad).is_none(), "{bad}");
        }
        assert!(record_name("wal/00000002/000000010000000000000001.rec").is_none(), "timeline folder must match");
    }

    #[test]
    fn order_puts_history_first_and_segments_in_position() {
        let mut v: Vec<WalName> = [
            "000000020000000000000005",
            "00000002.history",
            "000000010000000000000005.partial",
            "000000010000000000000005",
            "000000010000000000000004.00000028.backup",
            "000000010000000000000004",
        ]
        .iter()
        .map(|n| WalName::parse(n).unwrap())
        .collect();
        v.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
        let names: Vec<_> = v.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "000000010000000000000004",
                "000000010000000000000004.00000028.backup",
                "000000010000000000000005",
                "000000010000000000000005.partial",
                "00000002.history",
                "000000020000000000000005"
            ]
        );
    }

    #[test]
    fn lsn() {
        let l: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(l.0, 0x16_B374_D848);
        assert_eq!(l.to_string(), "16/B374D848");
        assert!("nope".parse::<Lsn>().is_err());
    }
}
