//! Row counts read from the dump itself, as it passes to the chunker.
//!
//! `pg_dump -Fc -Z0` writes PostgreSQL's custom archive format: a header,
//! the table of contents (one entry per object, `TABLE DATA` entries naming
//! each table's data), then the data blocks in the order pg_dump wrote them.
//! A table's block is its `COPY` text in length-prefixed pieces, one line per
//! row (a newline inside a value is written `\n`), then an end marker (`\.`
//! and two empty lines); a large-object block holds one piece list per
//! object. Counting the lines of each block gives the row counts the restore
//! check needs without a second scan of the database.
//!
//! The scanner follows archive versions 1.12 to 1.16 (pg_dump 9.6 to 17).
//! On anything else (a newer version, a compressed archive, bytes that do
//! not parse) it stops with the reason and the caller counts with SQL
//! instead, in the dump's own snapshot.
// Parses what a provider (or a source) serves: total, no panic (see the
// threat model in the README).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing))]
use std::collections::{BTreeMap, HashMap};

use super::LARGE_OBJECTS;

/// Versions this scanner reads: (1, 12) to (1, 16).
const OLDEST: (u8, u8) = (1, 12);
const NEWEST: (u8, u8) = (1, 16);
/// The newest pg_dump major version whose archives this scanner reads.
pub const NEWEST_PG_DUMP: u32 = 17;
/// Data block kinds.
const BLK_DATA: u8 = 1;
const BLK_BLOBS: u8 = 3;

#[derive(Debug, PartialEq)]
enum State {
    /// Header and table of contents, parsed from `head` as it fills.
    Head,
    /// Between data blocks: the next byte is a block kind.
    BlockKind,
    /// The dump id of a block (`blobs`: a large-object block).
    DumpId {
        blobs: bool,
    },
    /// A large-object block: the next object's oid, or 0 at its end.
    Oid,
    /// The length of a piece of a table's data or of a large object (`blob`),
    /// or 0 at its end.
    PieceLen {
        table: Option<u32>,
        blob: bool,
    },
    /// Inside a piece: `left` bytes, counted as rows of `table`.
    Piece {
        left: u64,
        table: Option<u32>,
        blob: bool,
    },
    Failed(String),
}

/// A streaming reader of a custom-format archive; see the module's docs.
pub struct DumpScan {
    state: State,
    /// Unparsed bytes of the header and table of contents, or of one integer.
    head: Vec<u8>,
    header: Option<Header>,
    /// Table-of-contents entries still to read.
    toc_left: u64,
    /// Dump id of each `TABLE DATA` entry → position in `names`.
    data_ids: HashMap<i64, u32>,
    names: Vec<String>,
    rows: Vec<u64>,
    /// The last bytes of the current table's data.
    tail: Vec<u8>,
    large_objects: u64,
    head_max: usize,
    /// Owners, and roles named in privileges (see `roles`).
    owners: std::collections::BTreeSet<String>,
    grantees: std::collections::BTreeSet<String>,
    /// Bytes fed so far.
    fed: u64,
    /// Where the table of contents ends, once read.
    toc_end: Option<u64>,
    /// Where the block being read began.
    block_at: u64,
    /// Every data block: where it begins in the stream.
    blocks: Vec<crate::manifest::DataBlock>,
}

#[derive(Clone, Copy)]
pub(crate) struct Header {
    version: (u8, u8),
    int_size: usize,
    off_size: usize,
}

/// Not enough bytes yet (the first `n` parsed), or bytes that are not
/// what was expected.
enum Short {
    More(usize),
    Bad(String),
}

/// A cursor over the head bytes.
struct Cur<'a> {
    b: &'a [u8],
    at: usize,
}

impl Cur<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], Short> {
        let s = self.b.get(self.at..self.at.checked_add(n).ok_or(Short::More(0))?).ok_or(Short::More(0))?;
        self.at += n;
        Ok(s)
    }

    fn byte(&mut self) -> Result<u8, Short> {
        self.take(1)?.first().copied().ok_or(Short::More(0))
    }

    fn int(&mut self, size: usize) -> Result<i64, Short> {
        let b = self.take(1 + size)?;
        decode_int(b).ok_or_else(|| Short::Bad("an integer too large".into()))
    }

    /// A string, `None` for the archive's NULL.
    fn str(&mut self, size: usize) -> Result<Option<String>, Short> {
        let n = self.int(size)?;
        if n < 0 {
            return Ok(None);
        }
        let s = self.take(n as usize)?;
        Ok(Some(String::from_utf8_lossy(s).into_owned()))
    }
}

/// An archive integer: a sign byte, then the magnitude little-endian.
fn decode_int(b: &[u8]) -> Option<i64> {
    let (sign, magnitude) = b.split_first()?;
    let mut v: u64 = 0;
    for (i, x) in magnitude.iter().enumerate() {
        if *x != 0 {
            v |= u64::from(*x).checked_shl(8 * i as u32).filter(|_| i < 8)?;
        }
    }
    let v = i64::try_from(v).ok()?;
    Some(if *sign != 0 { -v } else { v })
}

/// The most the header and table of contents may take: a stream that
/// claims more is not read (its rows are counted with SQL).
pub(crate) const HEAD_MAX: usize = 256 << 20;

impl Default for DumpScan {
    fn default() -> Self {
        DumpScan {
            state: State::Head,
            head: Vec::new(),
            header: None,
            toc_left: 0,
            data_ids: HashMap::new(),
            names: Vec::new(),
            rows: Vec::new(),
            tail: Vec::new(),
            large_objects: 0,
            head_max: HEAD_MAX,
            owners: Default::default(),
            grantees: Default::default(),
            fed: 0,
            toc_end: None,
            block_at: 0,
            blocks: Vec::new(),
        }
    }
}

impl DumpScan {
    /// The next bytes of the stream.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.fed += bytes.len() as u64;
        self.scan(bytes);
    }

    /// Scans `bytes`, the last bytes fed (so the stream position of
    /// `bytes[0]` is `fed - bytes.len()`).
    fn scan(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match self.state {
                State::Failed(_) => return,
                State::Head => {
                    if self.head.len() + bytes.len() > self.head_max {
                        self.state = State::Failed(format!("a table of contents over {} bytes", self.head_max));
                        return;
                    }
                    self.head.extend_from_slice(bytes);
                    let mut head = std::mem::take(&mut self.head);
                    match self.parse_head(&head) {
                        Ok(used) => {
                            // what follows the table of contents is data
                            self.state = State::BlockKind;
                            head.drain(..used);
                            self.toc_end = Some(self.fed - head.len() as u64);
                            return self.scan(&head);
                        }
                        Err(Short::More(kept)) => {
                            // parsing restarts at the first incomplete entry
                            head.drain(..kept);
                            self.head = head;
                        }
                        Err(Short::Bad(why)) => self.state = State::Failed(why),
                    }
                    return;
                }
                State::Piece { left, table, blob } => {
                    let (piece, rest) = bytes.split_at(left.min(bytes.len() as u64) as usize);
                    let n = piece.len();
                    if let Some(t) = table {
                        if let Some(rows) = self.rows.get_mut(t as usize) {
                            *rows += count_lines(piece);
                        }
                        self.tail.extend_from_slice(piece.get(n.saturating_sub(TAIL)..).unwrap_or_default());
                        self.tail.drain(..self.tail.len().saturating_sub(TAIL));
                    }
                    bytes = rest;
                    self.state = if left == n as u64 {
                        State::PieceLen { table, blob }
                    } else {
                        State::Piece { left: left - n as u64, table, blob }
                    };
                }
                State::BlockKind => {
                    self.block_at = self.fed - bytes.len() as u64;
                    let Some((&kind, rest)) = bytes.split_first() else { return };
                    bytes = rest;
                    self.state = match kind {
                        BLK_DATA => State::DumpId { blobs: false },
                        BLK_BLOBS => State::DumpId { blobs: true },
                        k => State::Failed(format!("a data block of unknown kind {k}")),
                    };
                }
                State::DumpId { .. } | State::Oid | State::PieceLen { .. } => {
                    let Some(header) = self.header else {
                        self.state = State::Failed("data before the table of contents".into());
                        return;
                    };
                    let size = 1 + header.int_size;
                    let (int, rest) = bytes.split_at(size.saturating_sub(self.head.len()).min(bytes.len()));
                    self.head.extend_from_slice(int);
                    bytes = rest;
                    if self.head.len() == size {
                        let v = decode_int(&std::mem::take(&mut self.head));
                        self.state = self.after_int(v);
                    }
                }
            }
        }
    }
}

impl DumpScan {
    /// The state after an integer of the data section.
    fn after_int(&mut self, v: Option<i64>) -> State {
        let Some(v) = v else { return State::Failed("an integer too large in the data".into()) };
        match self.state {
            State::DumpId { blobs } => {
                self.blocks.push(crate::manifest::DataBlock { id: v, at: self.block_at, large_objects: blobs });
                if blobs {
                    State::Oid
                } else {
                    State::PieceLen { table: self.data_ids.get(&v).copied(), blob: false }
                }
            }
            State::Oid if v == 0 => State::BlockKind,
            State::Oid => {
                self.large_objects += 1;
                State::PieceLen { table: None, blob: true }
            }
            State::PieceLen { table, blob: false } if v == 0 => {
                if let Some(rows) = table.and_then(|t| self.rows.get_mut(t as usize)) {
                    *rows = rows.saturating_sub(end_marker_lines(&self.tail));
                }
                self.tail.clear();
                State::BlockKind
            }
            State::PieceLen { blob: true, .. } if v == 0 => State::Oid,
            State::PieceLen { table, blob } if v > 0 => State::Piece { left: v as u64, table, blob },
            _ => State::Failed(format!("a data piece of length {v}")),
        }
    }

    /// Parses what `head` holds of the header and the table of contents.
    /// `Ok(n)`: complete, data starts at `n`; `More(k)`: the first `k` bytes
    /// are parsed, the rest waits for more.
    fn parse_head(&mut self, head: &[u8]) -> Result<usize, Short> {
        let mut c = Cur { b: head, at: 0 };
        let h = match self.header {
            Some(h) => h,
            None => {
                let h = parse_header(&mut c).map_err(|e| e.keeping(0))?;
                let n = c.int(h.int_size).map_err(|e| e.keeping(0))?;
                self.toc_left = u64::try_from(n).map_err(|_| Short::Bad("a negative number of entries".into()))?;
                self.header = Some(h);
                h
            }
        };
        while self.toc_left > 0 {
            let start = c.at;
            let entry = parse_entry(&mut c, h).map_err(|e| e.keeping(start))?;
            if let Some((id, name)) = entry.table_data {
                self.data_ids.insert(id, self.names.len() as u32);
                self.names.push(name);
                self.rows.push(0);
            }
            self.owners.extend(entry.owner);
            self.grantees.extend(entry.grantees);
            self.toc_left -= 1;
        }
        Ok(c.at)
    }

    /// The roles that own the dump's objects, and those its privileges
    /// name (empty until the table of contents is read).
    pub fn roles(&self) -> (Vec<String>, Vec<String>) {
        (self.owners.iter().cloned().collect(), self.grantees.iter().cloned().collect())
    }

    /// Where the table of contents ends and each data block begins, once
    /// the whole stream has been read (`None` if it could not be).
    pub fn layout(&self) -> Option<crate::manifest::ArchiveLayout> {
        self.counts().ok()?;
        Some(crate::manifest::ArchiveLayout { toc_end: self.toc_end?, blocks: self.blocks.clone() })
    }

    /// The row count of every table and the number of large objects, or why
    /// the stream could not be read.
    pub fn counts(&self) -> Result<BTreeMap<String, u64>, String> {
        match &self.state {
            State::Failed(why) => Err(why.clone()),
            State::BlockKind if self.head.is_empty() => {
                let mut counts: BTreeMap<String, u64> = self.names.iter().cloned().zip(self.rows.iter().copied()).collect();
                counts.insert(LARGE_OBJECTS.into(), self.large_objects);
                Ok(counts)
            }
            State::Head => Err("the stream ended inside the archive's table of contents".into()),
            _ => Err("the stream ended inside a data block".into()),
        }
    }
}

impl Short {
    /// `More` becomes `More(kept)`: the bytes before `kept` are parsed.
    fn keeping(self, kept: usize) -> Short {
        match self {
            Short::More(_) => Short::More(kept),
            bad => bad,
        }
    }
}

/// The archive header: magic, version, sizes, format, compression, date,
/// database and versions.
fn parse_header(c: &mut Cur) -> Result<Header, Short> {
    if c.take(5)? != b"PGDMP" {
        return Err(Short::Bad("not a custom-format archive (no PGDMP magic)".into()));
    }
    let (major, minor, _rev) = (c.byte()?, c.byte()?, c.byte()?);
    let version = (major, minor);
    if !(OLDEST..=NEWEST).contains(&version) {
        return Err(Short::Bad(format!(
            "archive version {major}.{minor} is not one this bascule reads (1.12 to 1.16, written by pg_dump 9.6 to {NEWEST_PG_DUMP}): upgrade bascule to count rows in the stream"
        )));
    }
    let int_size = c.byte()? as usize;
    let off_size = c.byte()? as usize;
    if !(1..=8).contains(&int_size) || !(1..=8).contains(&off_size) {
        return Err(Short::Bad(format!("integer size {int_size}, offset size {off_size}")));
    }
    let format = c.byte()?;
    if format != 1 {
        return Err(Short::Bad(format!("archive format {format}, not custom (1)")));
    }
    let compressed = if version >= (1, 15) { c.byte()? != 0 } else { c.int(int_size)? != 0 };
    if compressed {
        return Err(Short::Bad("a compressed archive (the dump runs with -Z0)".into()));
    }
    for _ in 0..7 {
        c.int(int_size)?; // creation date
    }
    for _ in 0..3 {
        c.str(int_size)?; // database, server version, pg_dump version
    }
    Ok(Header { version, int_size, off_size })
}

/// What bascule keeps of a table-of-contents entry.
struct Entry {
    id: i64,
    tag: Option<String>,
    namespace: Option<String>,
    tablespace: Option<String>,
    /// The dump ids of the entries it depends on.
    deps: Vec<i64>,
    section: i64,
    defn: Option<String>,
    copy_stmt: Option<String>,
    /// `(dump id, "schema.table")` for a table's data.
    table_data: Option<(i64, String)>,
    owner: Option<String>,
    /// The roles its privileges (or its policy) name.
    grantees: Vec<String>,
    desc: Option<String>,
    /// Where its definition and its owner stand in the bytes parsed (each
    /// field whole, its length included): what `rewrite` replaces.
    defn_at: std::ops::Range<usize>,
    owner_at: std::ops::Range<usize>,
}

/// One table-of-contents entry.
fn parse_entry(c: &mut Cur, h: Header) -> Result<Entry, Short> {
    let id = c.int(h.int_size)?;
    let _had_dumper = c.int(h.int_size)?;
    let _table_oid = c.str(h.int_size)?;
    let _oid = c.str(h.int_size)?;
    let tag = c.str(h.int_size)?;
    let desc = c.str(h.int_size)?;
    let section = c.int(h.int_size)?;
    let defn_start = c.at;
    let defn = c.str(h.int_size)?;
    let defn_at = defn_start..c.at;
    let _drop = c.str(h.int_size)?;
    let copy_stmt = c.str(h.int_size)?;
    let namespace = c.str(h.int_size)?;
    let tablespace = c.str(h.int_size)?;
    if h.version >= (1, 14) {
        c.str(h.int_size)?; // table access method
    }
    if h.version >= (1, 16) {
        c.int(h.int_size)?; // relkind
    }
    let owner_start = c.at;
    let owner = c.str(h.int_size)?;
    let owner_at = owner_start..c.at;
    let _with_oids = c.str(h.int_size)?;
    let mut deps = Vec::new();
    while let Some(d) = c.str(h.int_size)? {
        // dependencies, up to a NULL
        deps.extend(d.trim().parse::<i64>().ok());
    }
    // the data's offset: a flag byte, then the offset
    c.take(1 + h.off_size)?;
    let owner = owner.filter(|o| !o.is_empty());
    let grantees = match (desc.as_deref(), defn.as_deref()) {
        (Some(d @ ("ACL" | "DEFAULT ACL" | "POLICY")), Some(sql)) => roles::role_spans(d, sql).into_iter().map(|(r, _)| r).collect(),
        _ => Vec::new(),
    };
    let table_data = match (desc.as_deref(), &tag, &namespace) {
        (Some("TABLE DATA"), Some(table), Some(schema)) => Some((id, format!("{schema}.{table}"))),
        _ => None,
    };
    Ok(Entry { id, tag, namespace, tablespace, section, defn, copy_stmt, deps, table_data, owner, grantees, desc, defn_at, owner_at })
}

/// Bytes of a table's data kept to find its end marker.
const TAIL: usize = 6;

/// Lines of the end marker pg_dump writes after a table's rows (`\.`, then
/// two empty lines), found in the last bytes of its data.
fn end_marker_lines(tail: &[u8]) -> u64 {
    let at_line_start = |marker: &[u8]| {
        tail.ends_with(marker)
            && (tail.len() == marker.len() || tail.len().checked_sub(marker.len() + 1).and_then(|i| tail.get(i)) == Some(&b'\n'))
    };
    if at_line_start(b"\\.\n\n\n") {
        3
    } else if at_line_start(b"\\.\n") {
        1
    } else {
        0
    }
}

/// Newlines in `b` (one per row of `COPY` text).
mod lines;
use lines::count_lines;

mod block;
mod rewrite;
mod roles;
mod toc;

pub use block::{BlockReader, Part};
pub use rewrite::RoleMap;
pub use toc::{toc, Section, Toc, TocEntry};

#[cfg(test)]
mod tests;
