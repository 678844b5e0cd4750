//! `restore`: with the identity the customer handed over (kept in memory
//! only), fetch a snapshot from whichever provider holds good copies, check
//! every byte, feed `pg_restore`, then compare row counts with the export's.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bascule_core::keys::Identities;
use bascule_core::manifest::{Index, Manifest, SnapshotKind};
use bascule_core::provider::check_ciphertext;
use bascule_core::{hash_hex, seal, Error};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::tenant::Tenant;

pub struct RestoreRequest {
    pub snapshot: String,
    pub target: String,
    pub identities: Identities,
    pub concurrency: usize,
    pub pg_restore: Option<PathBuf>,
}

#[derive(Debug)]
pub struct RestoreReport {
    pub snapshot: String,
    /// The recovery point: when the export's consistent snapshot was taken.
    pub recovery_point: chrono::DateTime<chrono::Utc>,
    pub bytes: u64,
    pub chunks: usize,
    /// Bytes of ciphertext served by each provider.
    pub served: BTreeMap<String, u64>,
    pub fetch_and_restore: Duration,
    pub check: Duration,
    pub tables_checked: usize,
    pub rows_checked: u64,
    /// Tables whose row count differs: (table, at export, after restore).
    pub mismatches: Vec<(String, u64, Option<u64>)>,
}

/// Opens the sealed index with the customer's identity.
pub async fn open_index(tenant: &Tenant, m: &Manifest, ids: &Identities) -> anyhow::Result<Index> {
    let o = m.index.clone();
    let (ciphertext, _) = tenant
        .replicated
        .get_checked(&o.key, 0, |p, b| check_ciphertext(&o, p, &b).map(|_| b))
        .await?;
    let plain = seal::open(&ciphertext, ids, 256 << 20, &o.key, &m.recipients)?;
    serde_json::from_slice(&plain).map_err(|e| {
        Error::Body {
            key: o.key.clone(),
            reason: e.to_string(),
        }
        .into()
    })
}

/// Plaintext bytes one read may bring into memory (reads run `concurrency`
/// at a time, so memory stays below `concurrency` × this, whatever the size).
const READ_PLAIN_MAX: u64 = 4 << 20;
/// Bytes of unneeded ciphertext a read may skip over rather than split.
const READ_GAP_MAX: u64 = 64 << 10;

/// One ranged read of a pack, and the chunks it yields, in stream order.
#[derive(Debug, PartialEq)]
struct Read {
    object: u32,
    start: u64,
    end: u64,
    plain: u64,
    /// (index entry, offset of its blob in the read, blob length)
    parts: Vec<(usize, u64, u32)>,
}

/// Groups consecutive chunks lying close together in one pack into one read:
/// a first snapshot restores with about one request per pack.
fn plan_reads(m: &Manifest, index: &Index) -> anyhow::Result<Vec<Read>> {
    let mut reads: Vec<Read> = Vec::new();
    for (pos, e) in index.chunks.iter().enumerate() {
        let b = m
            .blobs
            .get(e.blob as usize)
            .with_context(|| format!("index entry {pos} points past the manifest's blobs"))?;
        let end = b.at + b.len as u64;
        match reads.last_mut() {
            Some(r)
                if r.object == b.object && b.at >= r.end && b.at - r.end <= READ_GAP_MAX && r.plain + e.len as u64 <= READ_PLAIN_MAX =>
            {
                r.parts.push((pos, b.at - r.start, b.len));
                r.end = end;
                r.plain += e.len as u64;
            }
            _ => reads.push(Read {
                object: b.object,
                start: b.at,
                end,
                plain: e.len as u64,
                parts: vec![(pos, 0, b.len)],
            }),
        }
    }
    Ok(reads)
}

/// Fetches, checks and opens the snapshot's chunks in order, calling `sink`
/// with each verified plaintext. Every blob is checked (age's AEAD, then the
/// plaintext hash from the authenticated index) before `sink` sees a byte; a
/// read that fails a check is served by the other provider.
pub async fn stream_chunks(
    tenant: &Tenant,
    m: &Manifest,
    index: &Index,
    ids: Arc<Identities>,
    concurrency: usize,
    mut sink: impl FnMut(Vec<u8>, &str) -> futures::future::BoxFuture<'static, anyhow::Result<()>>,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let max = m.chunker.max_size as usize;
    let mut whole = blake3::Hasher::new();
    let mut served: BTreeMap<String, u64> = BTreeMap::new();
    let reads = plan_reads(m, index)?;
    let mut fetched = futures::stream::iter(reads.into_iter().enumerate())
        .map(|(i, read)| {
            let ids = ids.clone();
            let obj = m.objects[read.object as usize].clone();
            async move {
                // spread reads over both providers; fall back on any failure
                let (plains, provider) = tenant
                    .replicated
                    .get_range_checked(&obj.key, Some(read.start..read.end), i, |_, bytes| {
                        let mut out = Vec::with_capacity(read.parts.len());
                        for (pos, off, len) in &read.parts {
                            let blob = bytes.get(*off as usize..(*off + *len as u64) as usize).ok_or_else(|| Error::Open {
                                key: obj.key.clone(),
                                reason: "short read".into(),
                            })?;
                            let plain = seal::open(blob, &ids, max, &obj.key, &m.recipients)?;
                            let entry = &index.chunks[*pos];
                            let h = hash_hex(&plain);
                            if plain.len() != entry.len as usize || h != entry.hash {
                                return Err(Error::PlaintextHash {
                                    key: obj.key.clone(),
                                    expected: entry.hash.clone(),
                                    actual: h,
                                });
                            }
                            out.push(plain);
                        }
                        Ok(out)
                    })
                    .await?;
                Ok::<_, anyhow::Error>((plains, provider, read.end - read.start))
            }
        })
        .buffered(concurrency);
    while let Some(item) = fetched.next().await {
        let (plains, provider, clen) = item?;
        *served.entry(provider.clone()).or_default() += clen;
        for plain in plains {
            whole.update(&plain);
            sink(plain, &provider).await?;
        }
    }
    let h = whole.finalize().to_hex().to_string();
    if h != index.stream_hash {
        bail!("reassembled stream hash {h} differs from the index's {}", index.stream_hash);
    }
    Ok(served)
}

pub async fn run(tenant: &mut Tenant, req: RestoreRequest) -> anyhow::Result<RestoreReport> {
    let name = tenant.resolve(&req.snapshot).await?;
    let (m, _) = tenant.manifest(&name).await?;
    if m.kind != SnapshotKind::PgDump {
        bail!(
            "snapshot {name} is a {} export; restore into PostgreSQL needs a pg_dump one",
            m.kind
        );
    }
    let ids = Arc::new(req.identities);
    let index = open_index(tenant, &m, &ids).await?;
    tracing::info!(snapshot = %name, bytes = m.source_bytes, chunks = index.chunks.len(), "Restoring");

    let t0 = Instant::now();
    let prog = req.pg_restore.clone().unwrap_or_else(|| PathBuf::from("pg_restore"));
    let mut child = tokio::process::Command::new(&prog)
        // one transaction: a restore that fails (a bad object, a full disk)
        // leaves the target database as it was
        .args(["--no-owner", "--exit-on-error", "--single-transaction", "--no-password", "--dbname"])
        .arg(&req.target)
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
    let streamed = stream_chunks(tenant, &m, &index, ids.clone(), req.concurrency, |plain, _| {
        let stdin = stdin.clone();
        Box::pin(async move {
            stdin
                .lock()
                .await
                .write_all(&plain)
                .await
                .context("pg_restore stopped reading (see its error below)")?;
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
    let fetch_and_restore = t0.elapsed();

    let t1 = Instant::now();
    let cfg = tokio_postgres::Config::from_str(&req.target).context("--target is not a valid PostgreSQL connection string")?;
    let (client, conn) = cfg
        .connect(tokio_postgres::NoTls)
        .await
        .context("cannot connect to the restored database")?;
    tokio::spawn(conn);
    let after = bascule_core::postgres::count_rows(&client).await?;
    let mut mismatches = Vec::new();
    for (table, n) in &index.row_counts {
        let got = after.get(table).copied();
        if got != Some(*n) {
            mismatches.push((table.clone(), *n, got));
        }
    }
    Ok(RestoreReport {
        snapshot: name,
        recovery_point: m.started_at,
        bytes: m.source_bytes,
        chunks: index.chunks.len(),
        served,
        fetch_and_restore,
        check: t1.elapsed(),
        tables_checked: index.row_counts.len(),
        rows_checked: index.row_counts.values().sum(),
        mismatches,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bascule_core::manifest::{BlobRef, IndexEntry, ObjectRef};

    fn manifest(blobs: Vec<(u32, u64, u32)>) -> Manifest {
        let obj = |k: &str| ObjectRef {
            key: k.into(),
            len: 1 << 30,
            hash: String::new(),
        };
        Manifest {
            format: 1,
            tenant: "t".into(),
            name: "n".into(),
            kind: SnapshotKind::PgDump,
            job: "j".into(),
            host: "h".into(),
            started_at: chrono::Utc::now(),
            finished_at: chrono::Utc::now(),
            source_bytes: 0,
            chunk_count: 0,
            new_bytes: 0,
            stored_bytes: 0,
            recipients: vec![],
            chunker: Default::default(),
            pack_size: 0,
            index: obj("i"),
            objects: vec![obj("p0"), obj("p1")],
            blobs: blobs
                .into_iter()
                .enumerate()
                .map(|(i, (object, at, len))| BlobRef {
                    id: i.to_string(),
                    object,
                    at,
                    len,
                })
                .collect(),
        }
    }

    fn index(entries: &[(u32, u32)]) -> Index {
        Index {
            format: 1,
            chunks: entries
                .iter()
                .map(|(blob, len)| IndexEntry {
                    blob: *blob,
                    len: *len,
                    hash: String::new(),
                })
                .collect(),
            stream_hash: String::new(),
            row_counts: Default::default(),
            source: Default::default(),
        }
    }

    #[test]
    fn contiguous_blobs_make_one_read_and_order_is_kept() {
        // blobs 0,1 contiguous in p0; blob 2 in p1; blob 0 again (a repeated chunk)
        let m = manifest(vec![(0, 0, 100), (0, 100, 50), (1, 0, 70)]);
        let reads = plan_reads(&m, &index(&[(0, 1000), (1, 1000), (2, 1000), (0, 1000)])).unwrap();
        assert_eq!(reads.len(), 3);
        assert_eq!((reads[0].object, reads[0].start, reads[0].end), (0, 0, 150));
        assert_eq!(reads[0].parts, vec![(0, 0, 100), (1, 100, 50)]);
        assert_eq!((reads[1].object, reads[1].start, reads[1].end), (1, 0, 70));
        assert_eq!(reads[2].parts, vec![(3, 0, 100)]);
    }

    #[test]
    fn reads_are_bounded_by_plaintext_size() {
        let n = 100u32;
        let m = manifest((0..n).map(|i| (0, i as u64 * 10, 10)).collect());
        let entries: Vec<(u32, u32)> = (0..n).map(|i| (i, 1 << 20)).collect();
        let reads = plan_reads(&m, &index(&entries)).unwrap();
        assert!(reads.iter().all(|r| r.plain <= READ_PLAIN_MAX));
        assert_eq!(reads.iter().map(|r| r.parts.len()).sum::<usize>(), n as usize);
        assert!(plan_reads(&m, &index(&[(n + 5, 1)])).is_err());
    }
}
