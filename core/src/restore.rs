//! Reading a snapshot back with the customer's identity: fetch the packs
//! from whichever provider holds good copies, check every byte (age's AEAD,
//! then each chunk's plaintext hash from the authenticated index, then the
//! whole stream's hash), and feed the plaintext to `pg_restore` or any sink.
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
    /// Offset of the segment in the read, and its ciphertext length.
    at: u64,
    len: u32,
    /// (index entry, offset of the chunk in the segment's plaintext)
    parts: Vec<(usize, u32)>,
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

/// Groups the stream's chunks into ranged reads: chunks of one segment share
/// one decryption, and segments lying close together in one pack share one
/// request, so a first snapshot restores with about one request per pack.
fn plan_reads(index: &Index) -> Vec<Read> {
    let mut reads: Vec<Read> = Vec::new();
    for (pos, b) in index.chunks.iter().enumerate() {
        let (e, end) = (b, b.at + b.seg as u64);
        if let Some(r) = reads.last_mut().filter(|r| r.object == b.pack && r.plain + e.len as u64 <= READ_PLAIN_MAX) {
            let last = r.segments.last_mut().expect("a read has a segment");
            if r.start + last.at == b.at {
                last.parts.push((pos, b.offset));
                r.plain += e.len as u64;
                continue;
            }
            if b.at >= r.end && b.at - r.end <= READ_GAP_MAX && r.segments.len() < READ_SEGMENTS_MAX {
                r.segments.push(SegmentRead { at: b.at - r.start, len: b.seg, parts: vec![(pos, b.offset)] });
                r.end = end;
                r.plain += e.len as u64;
                continue;
            }
        }
        reads.push(Read {
            object: b.pack,
            start: b.at,
            end,
            plain: e.len as u64,
            segments: vec![SegmentRead { at: 0, len: b.seg, parts: vec![(pos, b.offset)] }],
        });
    }
    reads
}

/// Decrypts the segments of one read, checks every wanted chunk against the
/// plaintext hash of the authenticated index, and returns them end to end.
fn open_read(read: &Read, bytes: &[u8], key: &str, m: &Manifest, index: &Index, ids: &Identities) -> crate::Result<Vec<u8>> {
    let max = (m.segment_size + m.chunker.max_size as u64) as usize;
    let mut out = Vec::with_capacity(read.plain as usize);
    for seg in &read.segments {
        let sealed = bytes
            .get(seg.at as usize..(seg.at + seg.len as u64) as usize)
            .ok_or_else(|| Error::Open { key: key.into(), reason: "short read".into() })?;
        let plain = seal::open(sealed, ids, max, key, &m.recipients)?;
        for (pos, offset) in &seg.parts {
            let entry = &index.chunks[*pos];
            let chunk = plain.get(*offset as usize..*offset as usize + entry.len as usize).unwrap_or_default();
            let h = hash_hex(chunk);
            if chunk.len() != entry.len as usize || h != entry.hash {
                return Err(Error::PlaintextHash { key: key.into(), expected: entry.hash.clone(), actual: h });
            }
            out.extend_from_slice(chunk);
        }
    }
    Ok(out)
}

/// Fetches, checks and opens the snapshot's chunks in order, calling `sink`
/// with verified plaintext (consecutive chunks together). Every chunk is checked (age's AEAD on its
/// segment, then its plaintext hash from the authenticated index) before
/// `sink` sees a byte; a read that fails a check is served by the other provider.
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
    // the positions each read emits, in order: together they must be every
    // chunk of the index exactly once, in stream order
    let emitted: Vec<Vec<usize>> = reads.iter().map(|r| r.segments.iter().flat_map(|s| s.parts.iter().map(|p| p.0)).collect()).collect();
    let mut emitted = emitted.into_iter();
    let mut next_pos = 0usize;
    let mut chained: Vec<&str> = Vec::with_capacity(index.chunks.len());
    let mut fetched = futures::stream::iter(reads.into_iter().enumerate())
        .map(|(i, read)| {
            let (ids, m, index, replicated) = (ids.clone(), m.clone(), index.clone(), replicated.clone());
            let key = m.objects[read.object as usize].key.clone();
            // a task of its own: reads progress while the previous one is written out
            tokio::spawn(async move {
                // spread reads over both providers; fall back on any failure.
                // Decryption is CPU work: let this worker block while others go on.
                let (plain, provider) = replicated
                    .get_range_checked(&key, Some(read.start..read.end), i, |_, bytes| {
                        tokio::task::block_in_place(|| open_read(&read, &bytes, &key, &m, &index, &ids))
                    })
                    .await?;
                Ok::<_, anyhow::Error>((plain, provider, read.end - read.start))
            })
        })
        .buffered(concurrency);
    while let Some(item) = fetched.next().await {
        let (plain, provider, clen) = item??;
        *served.entry(provider.clone()).or_default() += clen;
        for pos in emitted.next().unwrap_or_default() {
            if pos != next_pos {
                bail!("internal error: chunk {pos} emitted where chunk {next_pos} belongs");
            }
            chained.push(&index.chunks[pos].hash);
            next_pos += 1;
        }
        sink(plain).await?;
    }
    let h = crate::manifest::chain_hash(chained);
    if next_pos != index.chunks.len() || h != index.stream_hash {
        bail!("reassembled stream hash {h} differs from the index's {}", index.stream_hash);
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
    let stdin = Arc::new(tokio::sync::Mutex::new(child.stdin.take().expect("piped stdin")));
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
    use crate::manifest::IndexEntry;

    /// entries: (pack, segment at, segment len, offset in segment, chunk len)
    fn index(entries: &[(u32, u64, u32, u32, u32)]) -> Index {
        Index {
            format: 1,
            chunks: entries
                .iter()
                .map(|&(pack, at, seg, offset, len)| IndexEntry { pack, at, seg, offset, len, hash: String::new() })
                .collect(),
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
        assert_eq!(reads[0].segments[0].parts, vec![(0, 0), (1, 10)]);
        assert_eq!((reads[0].segments[1].at, reads[0].segments[1].len), (100, 50));
        assert_eq!((reads[1].object, reads[1].start, reads[1].end), (1, 0, 70));
        assert_eq!(reads[2].segments[0].parts, vec![(4, 0)]);
    }

    #[test]
    fn reads_are_bounded() {
        let n = 100u32;
        let entries: Vec<_> = (0..n).map(|i| (0, i as u64 * 10, 10, 0, 1 << 20)).collect();
        let reads = plan_reads(&index(&entries));
        assert!(reads.iter().all(|r| r.plain <= READ_PLAIN_MAX && r.segments.len() <= READ_SEGMENTS_MAX));
        assert_eq!(reads.iter().flat_map(|r| &r.segments).map(|s| s.parts.len()).sum::<usize>(), n as usize);
    }
}
