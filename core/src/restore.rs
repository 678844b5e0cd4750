//! Reading a snapshot back with the customer's identity: fetch the packs
//! from whichever provider holds good copies, check every byte (each
//! segment's ciphertext hash from the authenticated index before age opens
//! it, then the whole stream's hash), and feed the plaintext to `pg_restore` or any sink.
//! Used by the controller's `restore` and the agent's on-site `restore-test`.
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{bail, Context};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::keys::Identities;
use crate::manifest::{Index, Manifest};
use crate::provider::{check_ciphertext, Replicated};
use crate::{hash_hex, seal, Error};

/// Opens the sealed index with the customer's identity.
pub async fn open_index(replicated: &Replicated, m: &Manifest, ids: &Identities) -> anyhow::Result<Index> {
    let o = m.index.clone();
    if m.format != crate::manifest::FORMAT {
        bail!(
            "snapshot {} is in format {}; this bascule reads format {} (use the bascule release that wrote it)",
            m.name,
            m.format,
            crate::manifest::FORMAT
        );
    }
    let (ciphertext, _) = replicated.get_checked(&o.key, 0, |p, b| check_ciphertext(&o, p, &b).map(|_| b)).await?;
    let plain = seal::open(&ciphertext, ids, 1 << 30, &o.key, &m.recipients)?;
    let index: Index = serde_json::from_slice(&plain).map_err(|e| Error::Body { key: o.key.clone(), reason: e.to_string() })?;
    index.check_refs(m).map_err(|reason| Error::Body { key: o.key.clone(), reason })?;
    Ok(index)
}

/// Plaintext bytes of chunks one read may bring into memory (reads run
/// `concurrency` at a time, so memory stays bounded whatever the size).
const READ_PLAIN_MAX: u64 = 4 << 20;
/// Segments one read may decrypt.
const READ_SEGMENTS_MAX: usize = 16;
/// Bytes of unneeded ciphertext a read may skip over rather than split.
const READ_GAP_MAX: u64 = 64 << 10;

/// A sealed segment inside a read, and the chunks wanted from it.
#[derive(Debug, PartialEq)]
struct SegmentRead {
    /// Position in [`Index::segments`].
    segment: u32,
    /// Offset of the segment in the read.
    at: u64,
    /// (offset in the segment's plaintext, length) of each chunk wanted, in stream order.
    parts: Vec<(u32, u32)>,
}

/// One ranged read of a pack: consecutive segments, in stream order.
#[derive(Debug, PartialEq)]
struct Read {
    object: u32,
    start: u64,
    end: u64,
    plain: u64,
    segments: Vec<SegmentRead>,
}

impl Read {
    fn chunks(&self) -> usize {
        self.segments.iter().map(|s| s.parts.len()).sum()
    }
}

/// Groups the stream's chunks into ranged reads: chunks of one segment share
/// one decryption, and segments lying close together in one pack share one
/// request, so a first snapshot restores with about one request per pack.
fn plan_reads(index: &Index) -> Vec<Read> {
    let mut reads: Vec<Read> = Vec::new();
    for c in index.chunks() {
        let s = &index.segments[c.segment as usize];
        let end = s.at + s.len as u64;
        if let Some(r) = reads.last_mut().filter(|r| r.object == s.pack && r.plain + c.len as u64 <= READ_PLAIN_MAX) {
            let last = r.segments.last_mut().expect("a read has a segment");
            if last.segment == c.segment {
                last.parts.push((c.offset, c.len));
                r.plain += c.len as u64;
                continue;
            }
            if s.at >= r.end && s.at - r.end <= READ_GAP_MAX && r.segments.len() < READ_SEGMENTS_MAX {
                r.segments.push(SegmentRead { segment: c.segment, at: s.at - r.start, parts: vec![(c.offset, c.len)] });
                r.end = end;
                r.plain += c.len as u64;
                continue;
            }
        }
        reads.push(Read {
            object: s.pack,
            start: s.at,
            end,
            plain: c.len as u64,
            segments: vec![SegmentRead { segment: c.segment, at: 0, parts: vec![(c.offset, c.len)] }],
        });
    }
    reads
}

/// Checks each segment of one read against the ciphertext hash of the
/// authenticated index before decrypting it; returns the wanted chunks end to
/// end and the plaintext hash of each (for the stream hash).
fn open_read(
    read: &Read,
    bytes: &[u8],
    key: &str,
    provider: &str,
    m: &Manifest,
    index: &Index,
    ids: &Identities,
) -> crate::Result<(Vec<u8>, Vec<blake3::Hash>)> {
    let max = (m.segment_size + m.chunker.max_size as u64) as usize;
    let mut out = Vec::with_capacity(read.plain as usize);
    let mut hashes = Vec::with_capacity(read.chunks());
    for sr in &read.segments {
        let seg = &index.segments[sr.segment as usize];
        let what = format!("{key} (segment at byte {})", seg.at);
        let sealed = bytes.get(sr.at as usize..(sr.at + seg.len as u64) as usize).unwrap_or_default();
        let actual = hash_hex(sealed);
        if sealed.len() != seg.len as usize || actual != seg.hash {
            return Err(Error::CiphertextHash { key: what, provider: provider.into(), expected: seg.hash.clone(), actual });
        }
        let plain = seal::open(sealed, ids, max, &what, &m.recipients)?;
        for &(offset, len) in &sr.parts {
            let chunk = plain
                .get(offset as usize..offset as usize + len as usize)
                .ok_or_else(|| Error::Open { key: what.clone(), reason: "the index points past the segment's plaintext".into() })?;
            hashes.push(blake3::hash(chunk));
            out.extend_from_slice(chunk);
        }
    }
    Ok((out, hashes))
}

/// Fetches, checks and opens the snapshot's chunks in order, calling `sink`
/// with verified plaintext (consecutive chunks together). Every segment's
/// ciphertext is checked against the authenticated index before it is
/// decrypted (a read that fails a check is served by the other provider);
/// at the end, the chunks' plaintext hashes must chain to the stream hash the
/// agent recorded.
pub async fn stream_chunks(
    replicated: &Replicated,
    m: Arc<Manifest>,
    index: Arc<Index>,
    ids: Arc<Identities>,
    concurrency: usize,
    mut sink: impl FnMut(Vec<u8>) -> futures::future::BoxFuture<'static, anyhow::Result<()>>,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut served: BTreeMap<String, u64> = BTreeMap::new();
    let reads = plan_reads(&index);
    let mut chain = blake3::Hasher::new();
    let mut emitted = 0usize;
    let mut fetched = futures::stream::iter(reads.into_iter().enumerate())
        .map(|(i, read)| {
            let (ids, m, index, replicated) = (ids.clone(), m.clone(), index.clone(), replicated.clone());
            let key = m.objects[read.object as usize].key.clone();
            // a task of its own: reads progress while the previous one is written out
            tokio::spawn(async move {
                // spread reads over both providers; fall back on any failure.
                // Decryption is CPU work: let this worker block while others go on.
                let (opened, provider) = replicated
                    .get_range_checked(&key, Some(read.start..read.end), i, |p, bytes| {
                        tokio::task::block_in_place(|| open_read(&read, &bytes, &key, p, &m, &index, &ids))
                    })
                    .await?;
                Ok::<_, anyhow::Error>((opened, provider, read.end - read.start))
            })
        })
        .buffered(concurrency);
    while let Some(item) = fetched.next().await {
        let ((plain, hashes), provider, clen) = item??;
        *served.entry(provider.clone()).or_default() += clen;
        for h in &hashes {
            chain.update(h.as_bytes());
        }
        emitted += hashes.len();
        sink(plain).await?;
    }
    let h = chain.finalize().to_hex().to_string();
    if emitted != index.chunk_count() || h != index.stream_hash {
        bail!("reassembled stream hash {h} differs from the index's {}: the restored data is not what was exported", index.stream_hash);
    }
    Ok(served)
}

/// Every table's row count in the database `dsn` against the export's index.
pub struct RowCountCheck {
    pub tables: usize,
    pub rows: u64,
    /// Tables whose row count differs: (table, at export, now).
    pub mismatches: Vec<(String, u64, Option<u64>)>,
}

pub async fn compare_row_counts(index: &Index, dsn: &str) -> anyhow::Result<RowCountCheck> {
    let cfg = tokio_postgres::Config::from_str(dsn).context("not a valid PostgreSQL connection string")?;
    let (client, conn) = cfg.connect(tokio_postgres::NoTls).await.context("cannot connect to the restored database")?;
    tokio::spawn(conn);
    let after = crate::postgres::count_rows(&client).await?;
    let mut mismatches = Vec::new();
    for (table, n) in &index.row_counts {
        let got = after.get(table).copied();
        if got != Some(*n) {
            mismatches.push((table.clone(), *n, got));
        }
    }
    Ok(RowCountCheck { tables: index.row_counts.len(), rows: index.row_counts.values().sum(), mismatches })
}

/// Where [`pg_restore`] restores: the program, the target database (a libpq
/// connection string) and its password (passed in the environment).
pub struct PgRestore<'a> {
    pub prog: &'a Path,
    pub target: &'a str,
    pub password: Option<&'a str>,
}

/// Streams the snapshot into `pg_restore --dbname target` in one transaction
/// (a failed check kills `pg_restore` before it commits anything). Returns
/// the ciphertext bytes each provider served.
pub async fn pg_restore(
    replicated: &Replicated,
    m: Arc<Manifest>,
    index: Arc<Index>,
    ids: Arc<Identities>,
    concurrency: usize,
    to: PgRestore<'_>,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let PgRestore { prog, target, password } = to;
    let mut cmd = tokio::process::Command::new(prog);
    if let Some(p) = password {
        cmd.env("PGPASSWORD", p);
    }
    let mut child = cmd
        // one transaction: a restore that fails (a bad object, a full disk)
        // leaves the target database as it was
        .args(["--no-owner", "--exit-on-error", "--single-transaction", "--no-password", "--dbname"])
        .arg(target)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}; is the PostgreSQL client installed?", prog.display()))?;
    let stdin = child.stdin.take().expect("piped stdin");
    // a 1 MiB pipe instead of 64 KiB: far fewer wake-ups between this
    // process and pg_restore (the kernel may refuse; the default then stays)
    let _ = rustix::pipe::fcntl_setpipe_size(&stdin, 1 << 20);
    let stdin = Arc::new(tokio::sync::Mutex::new(stdin));
    let mut stderr = child.stderr.take().expect("piped stderr");
    let stderr_task = tokio::spawn(async move {
        let mut s = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut s).await;
        s
    });
    let name = m.name.clone();
    let streamed = stream_chunks(replicated, m, index, ids, concurrency, |plain| {
        let stdin = stdin.clone();
        Box::pin(async move {
            stdin.lock().await.write_all(&plain).await.context("pg_restore stopped reading (see its error below)")?;
            Ok(())
        })
    })
    .await;
    if streamed.is_err() {
        // never let pg_restore commit what it read before the bad object
        let _ = child.start_kill();
    }
    drop(stdin);
    let status = child.wait().await?;
    let errors = stderr_task.await.unwrap_or_default();
    let served = streamed.map_err(|e| e.context(format!("restore of {name} stopped; pg_restore said: {}", errors.trim())))?;
    if !status.success() {
        bail!("pg_restore failed ({status}): {}", errors.trim());
    }
    Ok(served)
}

/// What an on-site restore test found: digests and counts, never data.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreTestResult {
    pub format: u32,
    pub tenant: String,
    pub job: String,
    /// The snapshot restored (`<time>-<id>`) and when its export started.
    pub snapshot: String,
    pub snapshot_started_at: chrono::DateTime<chrono::Utc>,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: chrono::DateTime<chrono::Utc>,
    pub host: String,
    pub passed: bool,
    /// Why it failed, in bascule's words: `pg_restore`'s own messages, which
    /// may quote data, stay on the customer's site.
    pub failure: Option<String>,
    /// Plaintext bytes restored, and the stream hash they matched.
    pub bytes: u64,
    pub stream_hash: String,
    pub tables: usize,
    pub rows: u64,
    /// Tables whose row count differs: (table, at export, after restore).
    pub mismatches: Vec<(String, u64, Option<u64>)>,
}

/// The newest restore test, as the agent's HEAD names it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreTestSummary {
    /// Where the signed result is: `reports/restore-tests/<time>-<job>.json`.
    pub key: String,
    pub job: String,
    pub snapshot: String,
    pub at: chrono::DateTime<chrono::Utc>,
    pub passed: bool,
    /// When a restore test of this tenant last passed (this one or an earlier one).
    pub last_success_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl RestoreTestResult {
    /// Checks the agent's signature and that the result is `tenant`'s.
    pub fn open(bytes: &[u8], keys: &[crate::keys::TrustedKey], key: &str, tenant: &str) -> crate::Result<RestoreTestResult> {
        let (r, _): (RestoreTestResult, _) =
            crate::signed::open_valid(crate::signed::Kind::RestoreTest, bytes, keys, key, |r: &RestoreTestResult| r.started_at)?;
        if r.tenant != tenant {
            return Err(Error::Body { key: key.into(), reason: format!("restore test of tenant {:?}", r.tenant) });
        }
        Ok(r)
    }
}

/// The key of a restore test's signed result.
pub fn restore_test_key(at: chrono::DateTime<chrono::Utc>, job: &str) -> String {
    format!("{}{}-{job}.json", crate::layout::RESTORE_TESTS, at.format("%Y%m%dT%H%M%S%.3fZ"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Extent, Segment};

    /// chunks: (pack, segment at, segment len, offset in segment, chunk len)
    fn index(entries: &[(u32, u64, u32, u32, u32)]) -> Index {
        let mut segments: Vec<Segment> = Vec::new();
        let mut extents = Vec::new();
        for &(pack, at, len, offset, chunk) in entries {
            let pos = segments.iter().position(|s| s.pack == pack && s.at == at).unwrap_or_else(|| {
                segments.push(Segment { pack, at, len, hash: String::new() });
                segments.len() - 1
            });
            extents.push(Extent { segment: pos as u32, offset, lens: vec![chunk] });
        }
        Index {
            format: crate::manifest::FORMAT,
            segments,
            extents,
            stream_hash: String::new(),
            row_counts: Default::default(),
            source: Default::default(),
        }
    }

    #[test]
    fn chunks_of_a_segment_share_a_read_and_order_is_kept() {
        // chunks 0,1 in segment A (p0 @0), chunk 2 in segment B (p0 @100, contiguous),
        // chunk 3 in p1, then chunk 0 again (a repeated chunk)
        let reads =
            plan_reads(&index(&[(0, 0, 100, 0, 10), (0, 0, 100, 10, 10), (0, 100, 50, 0, 10), (1, 0, 70, 0, 10), (0, 0, 100, 0, 10)]));
        assert_eq!(reads.len(), 3);
        assert_eq!((reads[0].object, reads[0].start, reads[0].end), (0, 0, 150));
        assert_eq!(reads[0].segments[0].parts, vec![(0, 10), (10, 10)]);
        assert_eq!((reads[0].segments[1].segment, reads[0].segments[1].at), (1, 100));
        assert_eq!((reads[1].object, reads[1].start, reads[1].end), (1, 0, 70));
        assert_eq!(reads[2].segments[0].parts, vec![(0, 10)]);
        assert_eq!(reads.iter().map(Read::chunks).sum::<usize>(), 5);
    }

    #[test]
    fn reads_are_bounded() {
        let n = 100u32;
        let entries: Vec<_> = (0..n).map(|i| (0, i as u64 * 10, 10, 0, 1 << 20)).collect();
        let reads = plan_reads(&index(&entries));
        assert!(reads.iter().all(|r| r.plain <= READ_PLAIN_MAX && r.segments.len() <= READ_SEGMENTS_MAX));
        assert_eq!(reads.iter().map(Read::chunks).sum::<usize>(), n as usize);
    }
}
