//! A custom archive's header and table of contents read back whole, as a
//! parallel restore needs them (see [`crate::postgres::parallel`]).
// Parses what a provider served (after its checks): total, no panic.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing))]
use super::{parse_entry, parse_header, Cur, Short};

/// The archive's sections, as pg_dump numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    PreData,
    Data,
    PostData,
}

/// A table-of-contents entry, as a parallel restore needs it.
#[derive(Debug, Clone)]
pub struct TocEntry {
    pub id: i64,
    pub desc: String,
    /// The object's name and schema (`schema.table` for a table's data).
    pub tag: String,
    pub namespace: String,
    /// Its section; an entry without one (a comment, privileges) goes with
    /// the entry before it, as `pg_restore` places it.
    pub section: Section,
    pub defn: String,
    /// For a table's data: the `COPY … FROM stdin` statement that loads it.
    pub copy_stmt: Option<String>,
    /// Where it is created (empty: the database's default).
    pub tablespace: String,
    /// The dump ids of the entries it depends on.
    pub deps: Vec<i64>,
}

/// A whole header and table of contents, read back.
pub struct Toc {
    /// The archive's integer size (data blocks are framed with it).
    pub int_size: usize,
    pub entries: Vec<TocEntry>,
    /// Bytes the header and table of contents take.
    pub len: usize,
}

/// Reads the header and table of contents at the start of `head`.
pub fn toc(head: &[u8]) -> Result<Toc, String> {
    let short = |e: Short| match e {
        Short::More(_) => "the table of contents is cut short".to_string(),
        Short::Bad(why) => why,
    };
    let mut c = Cur { b: head, at: 0 };
    let h = parse_header(&mut c).map_err(short)?;
    let n = c.int(h.int_size).map_err(short)?;
    let n = usize::try_from(n).map_err(|_| "a negative number of entries".to_string())?;
    let mut entries = Vec::with_capacity(n.min(1 << 16));
    let mut section = Section::PreData;
    for _ in 0..n {
        let e = parse_entry(&mut c, h).map_err(short)?;
        section = match e.section {
            1 => section,
            2 => Section::PreData,
            3 => Section::Data,
            4 => Section::PostData,
            s => return Err(format!("entry {} is in an unknown section {s}", e.id)),
        };
        entries.push(TocEntry {
            id: e.id,
            desc: e.desc.unwrap_or_default(),
            tag: e.tag.unwrap_or_default(),
            namespace: e.namespace.unwrap_or_default(),
            section,
            defn: e.defn.unwrap_or_default(),
            copy_stmt: e.copy_stmt.filter(|s| !s.is_empty()),
            tablespace: e.tablespace.unwrap_or_default(),
            deps: e.deps,
        });
    }
    Ok(Toc { int_size: h.int_size, entries, len: c.at })
}
