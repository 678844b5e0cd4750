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

/// Fetches, checks and opens the snapshot's chunks in order, calling `sink`
/// with each verified plaintext. At most `concurrency` chunks are in memory.
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
    let mut chunks = futures::stream::iter(index.chunks.iter().enumerate())
        .map(|(pos, entry)| {
            let ids = ids.clone();
            let obj = m.objects.get(entry.object as usize).cloned();
            let recipients = m.recipients.clone();
            async move {
                let obj = obj.with_context(|| format!("index entry {pos} points past the manifest's objects"))?;
                // spread reads over both providers; fall back on any failure
                let (plain, provider) = tenant
                    .replicated
                    .get_checked(&obj.key, pos, |p, b| {
                        check_ciphertext(&obj, p, &b)?;
                        let plain = seal::open(&b, &ids, max, &obj.key, &recipients)?;
                        let h = hash_hex(&plain);
                        if plain.len() != entry.len as usize || h != entry.hash {
                            return Err(Error::PlaintextHash {
                                key: obj.key.clone(),
                                expected: entry.hash.clone(),
                                actual: h,
                            });
                        }
                        Ok(plain)
                    })
                    .await?;
                Ok::<_, anyhow::Error>((plain, provider, obj.len))
            }
        })
        .buffered(concurrency);
    while let Some(item) = chunks.next().await {
        let (plain, provider, clen) = item?;
        whole.update(&plain);
        *served.entry(provider.clone()).or_default() += clen;
        sink(plain, &provider).await?;
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
