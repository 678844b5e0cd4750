//! `restore`: with the identity the customer handed over (kept in memory
//! only), fetch a snapshot from whichever provider holds good copies, check
//! every byte, feed `pg_restore`, then compare row counts with the export's;
//! or write the verified stream to a file (`--output`).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bascule_core::keys::Identities;
use bascule_core::manifest::{Index, Manifest, SnapshotKind};
use bascule_core::restore;
pub use bascule_core::restore::{compare_row_counts, stream_chunks, RowCountCheck};
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
    restore::open_index(&tenant.replicated, m, ids).await
}

/// The export `wanted` names (`latest`: the newest pg_dump export, whatever
/// kind of snapshot HEAD names), with its manifest.
pub async fn resolve_export(tenant: &mut Tenant, wanted: &str) -> anyhow::Result<(String, Manifest)> {
    let mut name = tenant.resolve(wanted).await?;
    let (mut m, _) = tenant.manifest(&name).await?;
    if m.kind != SnapshotKind::PgDump && wanted == "latest" {
        // HEAD names the newest snapshot of any kind: take the newest export
        let names = Tenant::snapshot_names(&tenant.listings().await);
        for n in names.iter().rev() {
            let (c, _) = tenant.manifest(n).await?;
            if c.kind == SnapshotKind::PgDump {
                (name, m) = (n.clone(), c);
                break;
            }
        }
    }
    if m.kind != SnapshotKind::PgDump {
        bail!("snapshot {name} is a {} export; restore into PostgreSQL needs a pg_dump one", m.kind);
    }
    Ok((name, m))
}

/// What `restore --output` wrote.
pub struct Extracted {
    pub snapshot: String,
    pub bytes: u64,
    pub chunks: usize,
    pub served: BTreeMap<String, u64>,
}

/// Writes snapshot `wanted` (any kind) to the new file `out`, through
/// `out.partial`, renamed once the stream hash matched; removed on failure.
pub async fn extract(tenant: &mut Tenant, wanted: &str, ids: Identities, concurrency: usize, out: &Path) -> anyhow::Result<Extracted> {
    if out.exists() {
        bail!("{} exists; refusing to overwrite it", out.display());
    }
    let name = tenant.resolve(wanted).await?;
    let (m, _) = tenant.manifest(&name).await?;
    let ids = Arc::new(ids);
    let index = Arc::new(open_index(tenant, &m, &ids).await?);
    let m = Arc::new(m);
    let mut partial = out.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .await
        .with_context(|| format!("cannot create {}", partial.display()))?;
    let file = Arc::new(tokio::sync::Mutex::new(file));
    let sink = {
        let file = file.clone();
        move |plain: Vec<u8>| {
            let file = file.clone();
            Box::pin(async move { file.lock().await.write_all(&plain).await.context("writing the output file") })
                as futures::future::BoxFuture<'static, anyhow::Result<()>>
        }
    };
    let written = async {
        let served = stream_chunks(&tenant.replicated, m.clone(), index.clone(), ids, concurrency, sink).await?;
        file.lock().await.sync_all().await.context("writing the output file")?;
        tokio::fs::rename(&partial, out).await.with_context(|| format!("renaming {} to {}", partial.display(), out.display()))?;
        Ok::<_, anyhow::Error>(served)
    }
    .await;
    match written {
        Ok(served) => Ok(Extracted { snapshot: name, bytes: m.source_bytes, chunks: index.chunk_count(), served }),
        Err(e) => {
            let _ = tokio::fs::remove_file(&partial).await;
            Err(e.context(format!("snapshot {name}: nothing written to {}", out.display())))
        }
    }
}

pub async fn run(tenant: &mut Tenant, req: RestoreRequest) -> anyhow::Result<RestoreReport> {
    let (name, m) = resolve_export(tenant, &req.snapshot).await?;
    let ids = Arc::new(req.identities);
    let index = Arc::new(open_index(tenant, &m, &ids).await?);
    let m = Arc::new(m);
    tracing::info!(snapshot = %name, bytes = m.source_bytes, chunks = index.chunk_count(), "Restoring");

    let t0 = Instant::now();
    let prog = req.pg_restore.clone().unwrap_or_else(|| PathBuf::from("pg_restore"));
    let served = restore::pg_restore(
        &tenant.replicated,
        m.clone(),
        index.clone(),
        ids,
        req.concurrency,
        restore::PgRestore { prog: &prog, target: &req.target, password: None },
    )
    .await?;
    let fetch_and_restore = t0.elapsed();

    let t1 = Instant::now();
    let counts = compare_row_counts(&index, &req.target).await?;
    Ok(RestoreReport {
        snapshot: name,
        recovery_point: m.started_at,
        bytes: m.source_bytes,
        chunks: index.chunk_count(),
        served,
        fetch_and_restore,
        check: t1.elapsed(),
        tables_checked: counts.tables,
        rows_checked: counts.rows,
        mismatches: counts.mismatches,
    })
}
