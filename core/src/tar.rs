//! The tar headers of a base backup: the ustar subset PostgreSQL writes
//! (`pg_basebackup -Ft`): regular files, directories and symbolic links,
//! names of at most 255 bytes (prefix and name), sizes in octal or, past
//! 8 GiB, base-256. Every header's checksum is checked.
use std::path::{Component, Path, PathBuf};

/// A tar block.
pub const BLOCK: usize = 512;

/// What a member is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink(String),
}

/// One member's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// As written, `./` and all.
    pub name: String,
    pub kind: Kind,
    /// Permission bits (`0o7777` at most).
    pub mode: u32,
    /// Bytes of data that follow (zero for a directory or a link).
    pub size: u64,
}

/// The largest member accepted (1 TiB; PostgreSQL splits relations into
/// files of 1 GiB by default): sizes and their padding stay far from
/// overflowing.
pub const MEMBER_MAX: u64 = 1 << 40;

impl Header {
    /// The data and its padding: the bytes between this header and the next.
    pub fn padded_size(&self) -> u64 {
        self.size.div_ceil(BLOCK as u64) * BLOCK as u64
    }

    /// The member's path relative to the directory it unpacks into, or an
    /// error for one that would leave it (absolute, `..`); `None` for the
    /// directory itself (`./`).
    pub fn relative_path(&self) -> Result<Option<PathBuf>, String> {
        let mut p = PathBuf::new();
        for c in Path::new(&self.name).components() {
            match c {
                Component::Normal(n) => p.push(n),
                Component::CurDir => {}
                Component::RootDir | Component::Prefix(_) | Component::ParentDir => {
                    return Err(format!("member {:?} points outside the directory it unpacks into", self.name))
                }
            }
        }
        Ok((!p.as_os_str().is_empty()).then_some(p))
    }
}

fn text(field: &[u8]) -> Result<&str, String> {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    std::str::from_utf8(&field[..end]).map_err(|_| format!("a tar header field is not UTF-8: {:?}", String::from_utf8_lossy(field)))
}

/// A numeric field: octal (spaces and NULs around it), or base-256 when
/// its first byte has the high bit set.
pub fn number(field: &[u8]) -> Result<u64, String> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let mut n: u64 = u64::from(field[0] & 0x7f);
        for b in &field[1..] {
            n = n.checked_mul(256).and_then(|n| n.checked_add(u64::from(*b))).ok_or("a tar number overflows 64 bits")?;
        }
        return Ok(n);
    }
    let digits = text(field)?.trim_matches(|c| c == ' ' || c == '\0');
    if digits.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(digits, 8).map_err(|_| format!("a tar number is not octal: {digits:?}"))
}

/// Parses a 512-byte header block; `None` for a block of zeros (the end
/// of the archive).
pub fn parse(block: &[u8]) -> Result<Option<Header>, String> {
    if block.len() != BLOCK {
        return Err(format!("a tar header of {} bytes, not {BLOCK}", block.len()));
    }
    if block.iter().all(|b| *b == 0) {
        return Ok(None);
    }
    let stored = number(&block[148..156])?;
    let sum: u64 = block.iter().enumerate().map(|(i, b)| if (148..156).contains(&i) { 32 } else { u64::from(*b) }).sum();
    if stored != sum {
        return Err(format!("a tar header's checksum is {stored:o}, its bytes add up to {sum:o}: not a tar stream, or damaged"));
    }
    let name = text(&block[0..100])?;
    // POSIX ustar keeps a name's prefix here; GNU tar ("ustar  ") keeps times
    let prefix = if &block[257..263] == b"ustar\0" { text(&block[345..500])? } else { "" };
    let name = if prefix.is_empty() { name.to_string() } else { format!("{prefix}/{name}") };
    let mode = u32::try_from(number(&block[100..108])? & 0o7777).unwrap_or(0o600);
    let size = number(&block[124..136])?;
    if size > MEMBER_MAX {
        return Err(format!("member {name:?} claims {size} bytes, more than a data directory's file holds"));
    }
    let kind = match block[156] {
        b'0' | 0 => Kind::File,
        b'5' => Kind::Dir,
        b'2' => Kind::Symlink(text(&block[157..257])?.to_string()),
        t => return Err(format!("member {name:?} is of tar type {:?}, which a base backup does not hold", t as char)),
    };
    let size = if kind == Kind::File { size } else { 0 };
    Ok(Some(Header { name, kind, mode, size }))
}

/// The header block of `h` (ustar; for tests and tools that build a base
/// backup's stream).
///
/// # Panics
/// When the name or the link target is 100 bytes or more.
pub fn header(h: &Header) -> [u8; BLOCK] {
    let mut b = [0u8; BLOCK];
    b[..h.name.len()].copy_from_slice(h.name.as_bytes());
    b[100..108].copy_from_slice(format!("{:07o}\0", h.mode).as_bytes());
    b[124..136].copy_from_slice(format!("{:011o}\0", h.size).as_bytes());
    let (kind, link) = match &h.kind {
        Kind::File => (b'0', ""),
        Kind::Dir => (b'5', ""),
        Kind::Symlink(l) => (b'2', l.as_str()),
    };
    b[156] = kind;
    b[157..157 + link.len()].copy_from_slice(link.as_bytes());
    b[257..263].copy_from_slice(b"ustar\0");
    b[148..156].copy_from_slice(b"        ");
    let sum: u32 = b.iter().map(|x| u32::from(*x)).sum();
    b[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    b
}

/// A regular file's member: header, data, padding.
pub fn file_member(name: &str, data: &[u8]) -> Vec<u8> {
    let h = Header { name: name.into(), kind: Kind::File, mode: 0o600, size: data.len() as u64 };
    let mut out = header(&h).to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(name: &str, kind: u8, size: u64, link: &str) -> [u8; BLOCK] {
        let k = match kind {
            b'5' => Kind::Dir,
            b'2' => Kind::Symlink(link.into()),
            _ => Kind::File,
        };
        let mut b = header(&Header { name: name.into(), kind: k, mode: 0o600, size });
        if !matches!(kind, b'0' | b'5' | b'2') {
            // another type, its checksum made again
            b[156] = kind;
            b[148..156].copy_from_slice(b"        ");
            let sum: u32 = b.iter().map(|x| u32::from(*x)).sum();
            b[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        }
        b
    }

    #[test]
    fn headers_parse_and_hostile_ones_are_refused() {
        let h = parse(&block("./base/1/1259", b'0', 8192, "")).unwrap().unwrap();
        assert_eq!((h.kind.clone(), h.mode, h.size, h.padded_size()), (Kind::File, 0o600, 8192, 8192));
        assert_eq!(h.relative_path().unwrap(), Some(PathBuf::from("base/1/1259")));
        let l = parse(&block("pg_tblspc/16384", b'2', 0, "/srv/ts")).unwrap().unwrap();
        assert_eq!(l.kind, Kind::Symlink("/srv/ts".into()));
        assert_eq!(parse(&block("./", b'5', 0, "")).unwrap().unwrap().relative_path().unwrap(), None);
        assert!(parse(&[0u8; BLOCK]).unwrap().is_none());
        // outside the directory
        for bad in ["../etc/passwd", "/etc/passwd", "base/../../x"] {
            let e = parse(&block(bad, b'0', 1, "")).unwrap().unwrap().relative_path().unwrap_err();
            assert!(e.contains("outside"), "{bad}: {e}");
        }
        // a hard link, a device: not in a base backup
        assert!(parse(&block("x", b'1', 0, "y")).unwrap_err().contains("tar type '1'"));
        assert!(parse(&block("x", b'3', 0, "")).unwrap_err().contains("tar type '3'"));
        // a flipped byte fails the checksum
        let mut b = block("./global/pg_control", b'0', 8192, "");
        b[3] ^= 1;
        assert!(parse(&b).unwrap_err().contains("checksum"));
        // base-256 sizes, and one that would overflow its padding
        assert_eq!(number(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0]).unwrap(), 2 << 16);
        let mut b = block("base/1/1259", b'0', 0, "");
        b[124..136].copy_from_slice(&[0x80, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        b[148..156].copy_from_slice(b"        ");
        let sum: u32 = b.iter().map(|x| u32::from(*x)).sum();
        b[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        assert!(parse(&b).unwrap_err().contains("claims 18446744073709551615 bytes"));
        // GNU tar's header keeps times where ustar keeps the prefix: not read as one
        let mut b = block("PG_VERSION", b'0', 3, "");
        b[257..265].copy_from_slice(b"ustar  \0");
        b[345..350].copy_from_slice(b"12345");
        b[148..156].copy_from_slice(b"        ");
        let sum: u32 = b.iter().map(|x| u32::from(*x)).sum();
        b[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        assert_eq!(parse(&b).unwrap().unwrap().name, "PG_VERSION");
    }
}
