//! `--map-role old=new`: a custom archive, as it streams into `pg_restore`,
//! with its roles renamed. The header and table of contents are held until
//! complete (bounded as the scanner bounds them), each entry's owner and the
//! roles its privileges or policy name are replaced, and the rest (the
//! data) passes untouched. `pg_restore` reading a pipe never seeks: the
//! data offsets the table of contents records, now shifted, are not used.
// Parses what a provider served (after its checks): total, no panic.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing))]
use std::collections::BTreeMap;
use std::ops::Range;

use super::{parse_entry, parse_header, roles, Cur, Header, Short, HEAD_MAX};

/// Renames roles in a custom archive's stream; see the module's docs.
pub struct RoleMap {
    map: BTreeMap<String, String>,
    buf: Vec<u8>,
    /// Bytes of `buf` parsed (whole entries).
    parsed: usize,
    header: Option<Header>,
    toc_left: u64,
    /// Replacements in `buf`.
    patches: Vec<(Range<usize>, Vec<u8>)>,
    /// The table of contents is out: the rest passes.
    passing: bool,
    /// Entries whose roles were renamed.
    pub renamed: usize,
}

impl RoleMap {
    pub fn new(map: BTreeMap<String, String>) -> RoleMap {
        RoleMap { map, buf: Vec::new(), parsed: 0, header: None, toc_left: 0, patches: Vec::new(), passing: false, renamed: 0 }
    }

    /// What to hand on for the next `bytes` of the stream: nothing while the
    /// table of contents is read, then it rewritten, then the data as is.
    pub fn feed(&mut self, bytes: Vec<u8>) -> Result<Vec<u8>, String> {
        if self.passing {
            return Ok(bytes);
        }
        if self.buf.len() + bytes.len() > HEAD_MAX {
            return Err(format!("a table of contents over {HEAD_MAX} bytes"));
        }
        self.buf.extend_from_slice(&bytes);
        match self.parse() {
            Ok(()) => {
                self.passing = true;
                Ok(self.rewritten())
            }
            Err(Short::More(_)) => Ok(Vec::new()),
            Err(Short::Bad(why)) => Err(why),
        }
    }

    /// At the end of the stream: an error if it ended inside the table of contents.
    pub fn finish(&self) -> Result<(), String> {
        if self.passing {
            Ok(())
        } else {
            Err("the stream ended inside the archive's table of contents".into())
        }
    }

    fn parse(&mut self) -> Result<(), Short> {
        let buf = std::mem::take(&mut self.buf);
        let r = self.parse_in(&buf);
        self.buf = buf;
        r
    }

    fn parse_in(&mut self, buf: &[u8]) -> Result<(), Short> {
        let mut c = Cur { b: buf, at: self.parsed };
        let h = match self.header {
            Some(h) => h,
            None => {
                let h = parse_header(&mut c)?;
                let n = c.int(h.int_size)?;
                self.toc_left = u64::try_from(n).map_err(|_| Short::Bad("a negative number of entries".into()))?;
                self.header = Some(h);
                self.parsed = c.at;
                h
            }
        };
        while self.toc_left > 0 {
            let e = parse_entry(&mut c, h)?;
            let before = self.patches.len();
            if let Some(new) = e.owner.as_ref().and_then(|o| self.map.get(o)) {
                self.patches.push((e.owner_at.clone(), encode(new, h.int_size)?));
            }
            if let Some(d @ ("ACL" | "DEFAULT ACL" | "POLICY")) = e.desc.as_deref() {
                let raw = buf.get(e.defn_at.clone()).and_then(|f| f.get(1 + h.int_size..)).unwrap_or_default();
                let Ok(sql) = std::str::from_utf8(raw) else {
                    return Err(Short::Bad("a privilege statement that is not UTF-8: cannot rename its roles".into()));
                };
                let mapped = roles::map_roles(d, sql, &self.map);
                if mapped != sql {
                    self.patches.push((e.defn_at.clone(), encode(&mapped, h.int_size)?));
                }
            }
            if self.patches.len() > before {
                self.renamed += 1;
            }
            self.toc_left -= 1;
            self.parsed = c.at;
        }
        Ok(())
    }

    /// The bytes held, with the replacements made.
    fn rewritten(&mut self) -> Vec<u8> {
        let buf = std::mem::take(&mut self.buf);
        let mut out = Vec::with_capacity(buf.len());
        let mut at = 0;
        let mut patches = std::mem::take(&mut self.patches);
        // an entry's definition comes before its owner
        patches.sort_by_key(|(r, _)| r.start);
        for (range, with) in patches {
            out.extend_from_slice(buf.get(at..range.start).unwrap_or_default());
            out.extend_from_slice(&with);
            at = range.end;
        }
        out.extend_from_slice(buf.get(at..).unwrap_or_default());
        out
    }
}

/// An archive string: its length as an archive integer (a sign byte, then
/// `int_size` bytes, least significant first), then its bytes.
fn encode(s: &str, int_size: usize) -> Result<Vec<u8>, Short> {
    let len = s.len() as u64;
    if int_size < 8 && len >> (8 * int_size) != 0 {
        return Err(Short::Bad(format!("a renamed field of {len} bytes does not fit the archive's {int_size}-byte integers")));
    }
    let mut out = vec![0u8];
    out.extend((0..int_size).map(|i| if i < 8 { (len >> (8 * i)) as u8 } else { 0 }));
    out.extend_from_slice(s.as_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_encoded_string_reads_back() {
        let e = encode("Élus", 4).ok().unwrap();
        assert!(encode(&"x".repeat(300), 1).is_err());
        let mut c = Cur { b: &e, at: 0 };
        assert!(matches!(c.str(4), Ok(Some(s)) if s == "Élus"));
        assert_eq!(c.at, e.len());
    }
}
