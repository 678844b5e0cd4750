//! The dump scanner against real and hand-made archives.
use super::*;

/// Writes archives the way pg_dump does (4-byte integers, 8-byte offsets).
#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn int(&mut self, v: i64) -> &mut Self {
        self.0.push(u8::from(v < 0));
        self.0.extend_from_slice(&(v.unsigned_abs() as u32).to_le_bytes());
        self
    }
    fn str(&mut self, s: Option<&str>) -> &mut Self {
        match s {
            None => self.int(-1),
            Some(s) => {
                self.int(s.len() as i64);
                self.0.extend_from_slice(s.as_bytes());
                self
            }
        }
    }
    fn header(&mut self, minor: u8, compressed: bool) -> &mut Self {
        self.0.extend_from_slice(b"PGDMP");
        self.0.extend_from_slice(&[1, minor, 0, 4, 8, 1]);
        if minor >= 15 {
            self.0.push(u8::from(compressed));
        } else {
            self.int(i64::from(compressed) * 6);
        }
        for v in [12, 30, 1, 23, 10, 126, 0] {
            self.int(v);
        }
        self.str(Some("mairie")).str(Some("15.8")).str(Some("15.8"))
    }
    fn entry(&mut self, minor: u8, id: i64, desc: &str, schema: Option<&str>, tag: &str, deps: &[&str]) -> &mut Self {
        self.entry_with(minor, id, desc, schema, tag, "", deps)
    }
    #[allow(clippy::too_many_arguments)]
    fn entry_with(&mut self, minor: u8, id: i64, desc: &str, schema: Option<&str>, tag: &str, defn: &str, deps: &[&str]) -> &mut Self {
        self.int(id).int(1).str(Some("1259")).str(Some("16384")).str(Some(tag)).str(Some(desc)).int(2);
        self.str(Some(defn)).str(Some("")).str(Some("COPY …;\n")).str(schema).str(Some(""));
        if minor >= 14 {
            self.str(Some("heap"));
        }
        if minor >= 16 {
            self.int(114);
        }
        self.str(Some("mairie")).str(Some("false"));
        for d in deps {
            self.str(Some(d));
        }
        self.str(None);
        self.0.push(1); // offset not set
        self.0.extend_from_slice(&[0; 8]);
        self
    }
    fn piece(&mut self, data: &[u8]) -> &mut Self {
        self.int(data.len() as i64);
        self.0.extend_from_slice(data);
        self
    }
}

fn archive(minor: u8) -> Vec<u8> {
    let mut w = Writer::default();
    w.header(minor, false).int(8);
    w.entry(minor, 1, "ENCODING", None, "ENCODING", &[]);
    w.entry_with(minor, 2, "ACL", Some("public"), "TABLE citoyens", "GRANT SELECT ON TABLE public.citoyens TO mairie, lecteur;\n", &[]);
    w.entry(minor, 7, "TABLE", Some("public"), "citoyens", &["3"]);
    w.entry(minor, 20, "TABLE DATA", Some("public"), "citoyens", &["7"]);
    w.entry(minor, 21, "TABLE DATA", Some("état civil"), "actes vides", &[]);
    w.entry(minor, 22, "BLOBS", None, "BLOBS", &[]);
    w.entry(minor, 23, "TABLE DATA", Some("public"), "sans colonnes", &[]);
    w.entry(minor, 24, "TABLE DATA", Some("public"), "barre", &[]);
    // citoyens: three rows, one of them with an escaped newline, in two pieces
    w.0.push(BLK_DATA);
    w.int(20).piece(b"1\tZo\xc3\xa9\n2\tligne\\nsuite\n").piece(b"3\t\\N\n").piece(b"\\.\n\n\n").int(0);
    w.0.push(BLK_DATA);
    w.int(21).piece(b"\\.\n\n\n").int(0);
    // a table with no columns (empty lines), its end marker split, and one without a marker
    w.0.push(BLK_DATA);
    w.int(23).piece(b"\n\n\\").piece(b".\n\n\n").int(0);
    w.0.push(BLK_DATA);
    w.int(24).piece(b"x\\\\.\n").int(0);
    // two large objects, one of them with newlines in its bytes
    w.0.push(BLK_BLOBS);
    w.int(22).int(16400).piece(b"a\nb\nc\n").int(0).int(16401).int(0).int(0);
    w.0
}

fn scan(bytes: &[u8], piece: usize) -> Result<BTreeMap<String, u64>, String> {
    let mut s = DumpScan::default();
    bytes.chunks(piece).for_each(|c| s.feed(c));
    s.counts()
}

#[test]
fn counts_rows_and_large_objects_in_any_pieces() {
    for minor in [12, 14, 15, 16] {
        let a = archive(minor);
        for piece in [1, 2, 5, 13, 64, a.len()] {
            let c = scan(&a, piece).unwrap_or_else(|e| panic!("1.{minor} in pieces of {piece}: {e}"));
            let want: BTreeMap<String, u64> = [
                ("public.citoyens", 3),
                ("état civil.actes vides", 0),
                ("public.sans colonnes", 2),
                ("public.barre", 1),
                (LARGE_OBJECTS, 2),
            ]
            .map(|(k, v)| (k.to_string(), v))
            .into();
            assert_eq!(c, want, "1.{minor} in pieces of {piece}");
        }
    }
}

#[test]
fn refuses_what_it_cannot_read() {
    let mut newer = archive(16);
    newer[6] = 17;
    assert!(scan(&newer, 100).unwrap_err().contains("version 1.17"));
    let mut w = Writer::default();
    w.header(15, true).int(0);
    assert!(scan(&w.0, 100).unwrap_err().contains("compressed"));
    assert!(scan(b"-- PostgreSQL database dump\n", 100).unwrap_err().contains("PGDMP"));
    let a = archive(15);
    assert!(scan(&a[..a.len() - 3], 7).unwrap_err().contains("inside a data block"));
    assert!(scan(&a[..40], 7).unwrap_err().contains("table of contents"));
    // a table of contents that never ends is not kept whole in memory
    let mut w = Writer::default();
    w.header(15, false).int(1).int(1).int(1).str(Some("1259")).int(1 << 30);
    let mut s = DumpScan { head_max: 4096, ..DumpScan::default() };
    w.0.extend(vec![b'x'; 8192]);
    w.0.chunks(100).for_each(|c| s.feed(c));
    assert!(s.counts().unwrap_err().contains("over 4096 bytes"));
    assert!(s.head.len() <= 4096);
    let mut odd = a.clone();
    let at = odd.iter().rposition(|b| *b == BLK_BLOBS).unwrap();
    odd[at] = 9;
    assert!(scan(&odd, 7).unwrap_err().contains("unknown kind 9"));
}

#[test]
fn renamed_roles_leave_an_archive_that_reads_the_same() {
    let map: BTreeMap<String, String> = [("mairie".to_string(), "Mairie \"Nouvelle\"".to_string())].into();
    for minor in [12, 16] {
        let a = archive(minor);
        for piece in [1, 7, 64, a.len()] {
            let mut rw = RoleMap::new(map.clone());
            let mut out = Vec::new();
            for c in a.chunks(piece) {
                out.extend(rw.feed(c.to_vec()).unwrap());
            }
            rw.finish().unwrap();
            assert_eq!(rw.renamed, 8, "every entry is owned by mairie");
            let mut s = DumpScan::default();
            s.feed(&out);
            assert_eq!(s.counts(), scan(&a, a.len()), "1.{minor} in pieces of {piece}");
            assert_eq!(s.roles(), (vec!["Mairie \"Nouvelle\"".to_string()], vec!["Mairie \"Nouvelle\"".to_string(), "lecteur".into()]));
        }
    }
    // cut inside the table of contents: said at the end
    let a = archive(15);
    let mut rw = RoleMap::new(map);
    assert!(rw.feed(a[..40].to_vec()).unwrap().is_empty());
    assert!(rw.finish().unwrap_err().contains("table of contents"));
}

#[test]
fn the_layout_places_each_block_and_a_block_reader_reads_it_back_in_any_pieces() {
    let bytes = archive(16);
    for piece in [1, 3, 7, 4096] {
        let mut s = DumpScan::default();
        bytes.chunks(piece).for_each(|c| s.feed(c));
        let layout = s.layout().expect("a whole archive");
        let toc = toc(&bytes).unwrap();
        assert_eq!(toc.len as u64, layout.toc_end, "pieces of {piece}");
        assert_eq!(toc.entries.len(), 8);
        assert_eq!(toc.entries.iter().find(|e| e.id == 20).unwrap().copy_stmt.as_deref(), Some("COPY …;\n"));
        assert_eq!(
            layout.blocks.iter().map(|b| (b.id, b.large_objects)).collect::<Vec<_>>(),
            [(20, false), (21, false), (23, false), (24, false), (22, true)]
        );
        let mut rows = Vec::new();
        let mut objects = Vec::new();
        for (i, b) in layout.blocks.iter().enumerate() {
            let end = layout.blocks.get(i + 1).map(|n| n.at).unwrap_or(bytes.len() as u64);
            let block = &bytes[b.at as usize..end as usize];
            let mut r = BlockReader::new(4, b.id, b.large_objects);
            let mut text = Vec::new();
            for c in block.chunks(piece) {
                r.feed(c, |p| match p {
                    Part::Rows(x) => text.extend_from_slice(&c[x]),
                    Part::Bytes(x) => objects.push(String::from_utf8_lossy(&c[x]).into_owned()),
                    Part::Object(oid) => objects.push(oid.to_string()),
                })
                .unwrap();
            }
            r.finish().unwrap();
            rows.push(text);
        }
        assert_eq!(rows[0], b"1\tZo\xc3\xa9\n2\tligne\\nsuite\n3\t\\N\n\\.\n\n\n");
        assert_eq!(rows[3], b"x\\\\.\n");
        assert_eq!(objects.concat(), "16400a\nb\nc\n16401");
    }
}

#[test]
fn a_block_reader_refuses_another_entrys_block_and_one_cut_short() {
    let bytes = archive(16);
    let mut s = DumpScan::default();
    s.feed(&bytes);
    let layout = s.layout().unwrap();
    let (first, second) = (&layout.blocks[0], &layout.blocks[1]);
    let block = &bytes[first.at as usize..second.at as usize];
    let mut r = BlockReader::new(4, 21, false);
    let e = r.feed(block, |_| ()).unwrap_err();
    assert!(e.contains("says it is entry 20's"), "{e}");
    let mut r = BlockReader::new(4, 20, true);
    assert!(r.feed(block, |_| ()).unwrap_err().contains("block of its kind"));
    let mut r = BlockReader::new(4, 20, false);
    r.feed(&block[..block.len() - 2], |_| ()).unwrap();
    assert!(r.finish().unwrap_err().contains("cut short"));
    let mut r = BlockReader::new(4, 20, false);
    let mut longer = block.to_vec();
    longer.push(0);
    assert!(r.feed(&longer, |_| ()).unwrap_err().contains("after the end"));
}

#[test]
fn counts_newlines_at_any_length_and_alignment() {
    // every length around the 64-byte blocks and the 255-block runs, from every offset
    let bytes: Vec<u8> = (0u32..40_000).map(|i| if i.wrapping_mul(2_654_435_761) % 7 == 0 { b'\n' } else { b'a' }).collect();
    let all_newlines = vec![b'\n'; 64 * 255 * 2 + 3];
    for b in [&bytes[..], &all_newlines[..]] {
        for len in [0, 1, 63, 64, 65, 64 * 255 - 1, 64 * 255, 64 * 255 + 1, b.len() - 3] {
            for at in [0, 1, 3] {
                let s = &b[at..at + len];
                assert_eq!(super::count_lines(s), s.iter().filter(|x| **x == b'\n').count() as u64, "{len} bytes from {at}");
            }
        }
    }
}
