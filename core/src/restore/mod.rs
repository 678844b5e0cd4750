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

/// The chunks of a snapshot's stream, where each begins, and the plaintext
/// hash of each once read: a restore that reads the stream in parts (in
/// parallel, some chunks twice) still checks the whole stream's hash.
pub struct Seen {
    /// Where chunk `i` begins; the last value is the stream's length.
    starts: Vec<u64>,
    /// The position of each extent's first chunk.
    extent_first: Vec<usize>,
    hashes: std::sync::Mutex<Vec<Option<blake3::Hash>>>,
}

impl Seen {
    pub fn new(index: &Index) -> Seen {
        let mut starts = Vec::with_capacity(index.chunk_count() + 1);
        let mut at = 0u64;
        starts.push(0);
        for c in index.chunks() {
            at = at.saturating_add(c.len as u64);
            starts.push(at);
        }
        let mut extent_first = Vec::with_capacity(index.extents.len());
        let mut n = 0;
        for e in &index.extents {
            extent_first.push(n);
            n += e.lens.len();
        }
        Seen { hashes: std::sync::Mutex::new(vec![None; starts.len() - 1]), starts, extent_first }
    }

    /// The chunks from chunk `first` on, without walking those before.
    fn chunks_from<'a>(&self, index: &'a Index, first: usize) -> impl Iterator<Item = crate::manifest::ChunkAt> + 'a {
        let e = self.extent_first.partition_point(|&f| f <= first).saturating_sub(1);
        let skip = first.saturating_sub(self.extent_first.get(e).copied().unwrap_or(0));
        index.chunks_from_extent(e).skip(skip)
    }

    /// The stream's length, as the index gives it.
    pub fn len(&self) -> u64 {
        self.starts.last().copied().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The chunks holding bytes `range` of the stream: first and past the last.
    fn covering(&self, range: &std::ops::Range<u64>) -> (usize, usize) {
        let first = self.starts.partition_point(|&s| s <= range.start).saturating_sub(1);
        let end = self.starts.partition_point(|&s| s < range.end);
        (first, end.max(first))
    }

    fn record(&self, first: usize, hashes: &[blake3::Hash]) {
        let mut all = self.hashes.lock().unwrap_or_else(|e| e.into_inner());
        for (slot, h) in all.iter_mut().skip(first).zip(hashes) {
            *slot = Some(*h);
        }
    }

    /// Every chunk read, and their hashes chaining to the stream hash.
    pub fn verify(&self, index: &Index) -> Result<(), RestoreError> {
        let all = self.hashes.lock().unwrap_or_else(|e| e.into_inner());
        let mut chain = blake3::Hasher::new();
        let mut read = 0usize;
        for h in all.iter().flatten() {
            chain.update(h.as_bytes());
            read += 1;
        }
        let h = chain.finalize().to_hex().to_string();
        if read != index.chunk_count() || h != index.stream_hash {
            return Err(RestoreError::StreamHash {
                expected: index.stream_hash.clone(),
                actual: if read == all.len() { h } else { format!("{read} of {} chunks read", all.len()) },
            });
        }
        Ok(())
    }
}

/// Reads bytes `range` of the snapshot's stream, with the checks of
/// [`stream_chunks`] on every read, handing `sink` exactly those bytes in
/// order and recording each chunk's hash in `seen` (the stream hash is
/// checked once every part is read: [`Seen::verify`]). Returns the
/// ciphertext bytes each provider served.
#[allow(clippy::too_many_arguments)]
pub async fn stream_range(
    replicated: &Replicated,
    m: Arc<Manifest>,
    index: Arc<Index>,
    ids: Arc<Identities>,
    concurrency: usize,
    range: std::ops::Range<u64>,
    seen: &Seen,
    progress: &crate::progress::Progress,
    mut sink: impl FnMut(Vec<u8>) -> futures::future::BoxFuture<'static, Result<(), RestoreError>>,
) -> Result<BTreeMap<String, u64>, RestoreError> {
    let mut served: BTreeMap<String, u64> = BTreeMap::new();
    if range.end > seen.len() || range.start > range.end {
        return Err(Error::Body { key: m.index.key.clone(), reason: format!("bytes {range:?} of a stream of {} bytes", seen.len()) }.into());
    }
    let (first, end) = seen.covering(&range);
    let reads = plan::plan_reads_of(&index, seen.chunks_from(&index, first).take(end - first), &m.index.key)?;
    let mut chunk = first;
    let mut at = seen.starts.get(first).copied().unwrap_or(0);
    let mut fetched = futures::stream::iter(reads.into_iter().enumerate())
        .map(|(i, read)| spawn_read(replicated, &m, &index, &ids, i, read))
        .buffered(concurrency.max(1));
    while let Some(item) = fetched.next().await {
        let ((mut plain, hashes), provider, clen) = item??;
        *served.entry(provider.clone()).or_default() += clen;
        seen.record(chunk, &hashes);
        chunk += hashes.len();
        let (from, to) = (at, at + plain.len() as u64);
        at = to;
        // keep only what lies in `range`
        plain.truncate(to.min(range.end).saturating_sub(from) as usize);
        let skip = range.start.saturating_sub(from) as usize;
        if skip > 0 {
            plain.drain(..skip.min(plain.len()));
        }
        if plain.is_empty() {
            continue;
        }
        let len = plain.len() as u64;
        sink(plain).await?;
        progress.add(len);
    }
    Ok(served)
}

/// What one read brings: the chunks' plaintext end to end and the hash of
/// each, the provider that served it, the ciphertext bytes it took.
type Opened = ((Vec<u8>, Vec<blake3::Hash>), String, u64);

/// Fetches, checks and opens one planned read in a task of its own (reads
/// progress while the previous one is written out), spread over both
/// providers and falling back on any failure.
fn spawn_read(
    replicated: &Replicated,
    m: &Arc<Manifest>,
    index: &Arc<Index>,
    ids: &Arc<Identities>,
    i: usize,
    read: plan::Read,
) -> tokio::task::JoinHandle<Result<Opened, RestoreError>> {
    let (ids, m, index, replicated) = (ids.clone(), m.clone(), index.clone(), replicated.clone());
    let key = m.objects.get(read.object as usize).map(|o| o.key.clone());
    tokio::spawn(async move {
        let key = key.ok_or_else(|| Error::Body { key: m.index.key.clone(), reason: "a segment points past the packs".into() })?;
        // decryption is CPU work: let this worker block while others go on
        let (opened, provider) = replicated
            .get_range_checked(&key, read.start..read.end, i, |p, bytes| {
                tokio::task::block_in_place(|| plan::open_read(&read, &bytes, &key, p, &m, &index, &ids))
            })
            .await?;
        Ok((opened, provider, read.end - read.start))
    })
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
        .map(|(i, read)| spawn_read(replicated, &m, &index, &ids, i, read))
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
