//! Reading a snapshot back with the customer's identity: fetch the packs
//! from whichever provider holds good copies, check every byte (each
//! segment's ciphertext hash from the authenticated index before age opens
//! it, then the whole stream's hash), and hand the plaintext to a sink:
//! `pg_restore` (see [`crate::postgres::pg_restore`]), `tar`, a file.
//! Used by the controller's `restore` and the agent's on-site `restore-test`.
// Parses what a provider (or a source) serves: total, no panic (see the
// threat model in the README).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing))]
mod plan;

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;

use crate::keys::Identities;
use crate::manifest::{Index, Manifest};
use crate::provider::Replicated;
use crate::{seal, Error};

/// Why a snapshot could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("snapshot {snapshot} is in format {found}; this bascule reads format {expected} (use the bascule release that wrote it)")]
    Format { snapshot: String, found: u32, expected: u32 },
    #[error(transparent)]
    Object(#[from] Error),
    #[error("reassembled stream hash {actual} differs from the index's {expected}: the restored data is not what was exported")]
    StreamHash { expected: String, actual: String },
    /// The sink (pg_restore, tar, a file) stopped taking the stream.
    #[error("{what}: {source}")]
    Sink {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("a read of the snapshot stopped: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// The reads a restore would make of `index` (for the fuzz targets).
#[doc(hidden)]
pub fn plan_for_fuzz(index: &Index) -> usize {
    plan::plan_reads(index, "i").map(|r| r.len()).unwrap_or(0)
}

impl RestoreError {
    /// The sink failed: `what` says which and what to look at.
    pub fn sink(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RestoreError {
        move |source| RestoreError::Sink { what: what.into(), source }
    }
}

/// Opens the sealed index with the customer's identity.
pub async fn open_index(replicated: &Replicated, m: &Manifest, ids: &Identities) -> Result<Index, RestoreError> {
    let o = m.index.clone();
    if m.format != crate::manifest::FORMAT {
        return Err(RestoreError::Format { snapshot: m.name.clone(), found: m.format, expected: crate::manifest::FORMAT });
    }
    let (ciphertext, _) = replicated.get_ref_checked(&o, 0).await?;
    let plain = seal::open(&ciphertext, ids, 1 << 30, &o.key, &m.recipients)?;
    let index: Index = serde_json::from_slice(&plain).map_err(|e| Error::Body { key: o.key.clone(), reason: e.to_string() })?;
    index.check_refs(m, &o.key)?;
    Ok(index)
}

/// Fetches, checks and opens the snapshot's chunks in order, calling `sink`
/// with verified plaintext (consecutive chunks together). Every segment's
/// ciphertext is checked against the authenticated index before it is
/// decrypted (a read that fails a check is served by the other provider);
/// at the end, the chunks' plaintext hashes must chain to the stream hash the
/// agent recorded. Returns the ciphertext bytes each provider served.
/// `progress` counts the plaintext handed on.
pub async fn stream_chunks(
    replicated: &Replicated,
    m: Arc<Manifest>,
    index: Arc<Index>,
    ids: Arc<Identities>,
    concurrency: usize,
    progress: &crate::progress::Progress,
    mut sink: impl FnMut(Vec<u8>) -> futures::future::BoxFuture<'static, Result<(), RestoreError>>,
) -> Result<BTreeMap<String, u64>, RestoreError> {
    let mut served: BTreeMap<String, u64> = BTreeMap::new();
    let reads = plan::plan_reads(&index, &m.index.key)?;
    let mut chain = blake3::Hasher::new();
    let mut emitted = 0usize;
    let mut fetched = futures::stream::iter(reads.into_iter().enumerate())
        .map(|(i, read)| {
            let (ids, m, index, replicated) = (ids.clone(), m.clone(), index.clone(), replicated.clone());
            let key = m.objects.get(read.object as usize).map(|o| o.key.clone());
            // a task of its own: reads progress while the previous one is written out
            tokio::spawn(async move {
                let key = key.ok_or_else(|| Error::Body { key: m.index.key.clone(), reason: "a segment points past the packs".into() })?;
                // spread reads over both providers; fall back on any failure.
                // Decryption is CPU work: let this worker block while others go on.
                let (opened, provider) = replicated
                    .get_range_checked(&key, read.start..read.end, i, |p, bytes| {
                        tokio::task::block_in_place(|| plan::open_read(&read, &bytes, &key, p, &m, &index, &ids))
                    })
                    .await?;
                Ok::<_, RestoreError>((opened, provider, read.end - read.start))
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
        let n = plain.len() as u64;
        sink(plain).await?;
        progress.add(n);
    }
    let h = chain.finalize().to_hex().to_string();
    if emitted != index.chunk_count() || h != index.stream_hash {
        return Err(RestoreError::StreamHash { expected: index.stream_hash.clone(), actual: h });
    }
    Ok(served)
}
