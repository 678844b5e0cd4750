//! One export: source → FastCDC → keyed id → dedup → seal → packs → both
//! providers; then the sealed index, the signed manifest and HEAD, on each
//! provider that holds every pack.
//!
//! Stages: the chunker runs on a blocking thread and feeds a bounded channel
//! with batches of chunks; batches are hashed in parallel on the blocking
//! pool and each chunk is found known or new ([`session`]); new chunks are
//! gathered into segments, sealed and laid out in packs ([`packer`]); then
//! the [`commit`]. The chunk tables that make the next run incremental are
//! in [`known`] and [`table`]. Memory is bounded by the channel, the batches
//! and segments in flight and a few packs, whatever the size of the
//! database: chunk tables past a bound are on disk ([`distinct`]), and what
//! grows with the stream in memory is 4 bytes per chunk of the index (its
//! length) and 2 per chunk of Bloom filter.
mod commit;
mod distinct;
mod known;
mod packer;
mod session;
mod table;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use bascule_core::chunker::Batch;
use bascule_core::layout;
use bascule_core::manifest::Extent;
use futures::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;

pub use packer::SEGMENT_SIZE;

use crate::chunk_id::ChunkId;
use crate::config::JobConfig;
use crate::source::{Running, SourceFacts};
use crate::Agent;
use bascule_core::progress::Progress;
use distinct::Distinct;
use known::{Known, Tables};
use packer::Packer;
use session::Session;
use table::Loc;

/// Bytes the chunker hands on at once (hashed together on the blocking pool).
const BATCH_SIZE: usize = 1 << 20;

/// What one run did, per provider.
#[derive(Debug)]
pub struct SnapshotReport {
    pub name: String,
    pub source_bytes: u64,
    pub chunk_count: u64,
    pub new_bytes: u64,
    pub stored_bytes: u64,
    /// Ciphertext bytes of the sealed index (sent whole every run).
    pub index_bytes: u64,
    pub elapsed: std::time::Duration,
    /// Provider name → `Ok` or why it does not hold this snapshot.
    pub providers: Vec<(String, Result<(), String>)>,
}

impl SnapshotReport {
    pub fn degraded(&self) -> bool {
        self.providers.iter().any(|(_, r)| r.is_err())
    }
}

/// What the stream gave: the packer (what the snapshot references), the
/// chunks in order, the stream's fingerprint and what the source said.
struct Exported {
    packer: Packer,
    /// The stream, in order.
    extents: Vec<Extent>,
    chunk_count: u64,
    stream_hash: String,
    source_bytes: u64,
    facts: SourceFacts,
}

pub async fn run(
    agent: Arc<Agent>,
    job: &JobConfig,
    at: Option<chrono::DateTime<chrono::Utc>>,
    cancel: CancellationToken,
    progress: &Progress,
) -> anyhow::Result<SnapshotReport> {
    let t0 = Instant::now();
    let started_at = at.unwrap_or_else(chrono::Utc::now);
    progress.phase(&format!("job {}: listing what each provider holds", job.name));
    let tables = Tables::of(&agent.config.state_dir, &job.name, &agent.config.recipients);
    let session = Arc::new(open_session(&agent, &tables, cancel).await?);
    progress.phase(&format!("job {}: export started", job.name));
    let exported = export(&session, job, &tables, progress).await?;
    progress.phase(&format!("job {}: export read, committing", job.name));
    commit::commit(&session, job, &tables, started_at, t0, exported).await
}

/// What each provider holds, the chunks this agent stored before, and the
/// packs a prune condemned: the run's session.
async fn open_session(agent: &Arc<Agent>, tables: &Tables, cancel: CancellationToken) -> anyhow::Result<Session> {
    let mut listings = Vec::new();
    let mut why_down = Vec::new();
    // both at once: a slow provider costs its own deadline, not the other's time
    let answers = futures::future::join_all(agent.replicated.replicas.iter().map(|r| r.list(layout::PACKS))).await;
    for (r, answer) in agent.replicated.replicas.iter().zip(answers) {
        match answer {
            Ok(l) => {
                listings.push(l);
                why_down.push(None);
            }
            Err(e) => {
                tracing::error!(provider = %r.provider, error = %e, "Provider unreachable; this run goes to the other one only (degraded)");
                listings.push(BTreeMap::new());
                why_down.push(Some(e.to_string()));
            }
        }
    }
    if why_down.iter().all(Option::is_some) {
        bail!("no provider is reachable: {}", why_down.iter().flatten().cloned().collect::<Vec<_>>().join("; "));
    }
    let writer = agent.replicated.writer_without(why_down);
    let mut known = tables.read()?;
    let condemned: HashSet<String> = match commit::condemned_lists(agent, &writer.up()).await {
        Ok(lists) => lists.values().flat_map(|l| l.packs.iter().map(|p| p.key.clone())).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "Cannot read the prune's condemned lists: this run reuses no earlier pack");
            known = Known::default();
            HashSet::new()
        }
    };
    Ok(Session::new(agent.clone(), writer, listings, known, tables.journal.clone(), cancel, condemned))
}

/// A batch of chunks with, for each, its id, plaintext hash, and where it
/// was stored before (`None`: new, or not reusable).
type Placed = (Batch, Vec<(ChunkId, blake3::Hash)>, Vec<Option<Loc>>);

/// The stream as extents of the segment table, built chunk by chunk.
#[derive(Default)]
struct Extents {
    extents: Vec<Extent>,
    /// Where the last extent ends.
    next: Option<Loc>,
}

impl Extents {
    fn push(&mut self, at: Loc, len: u32) {
        match self.extents.last_mut() {
            Some(e) if self.next == Some(at) => e.lens.push(len),
            _ => self.extents.push(Extent { segment: at.segment, offset: at.offset, lens: vec![len] }),
        }
        self.next = Some(Loc { segment: at.segment, offset: at.offset + len });
    }
}

/// Stages one and two: the chunker thread, then each batch hashed on the
/// blocking pool and each chunk found known or new, batches in parallel,
/// results in stream order. A chunk repeated in the stream is recognised by
/// stage three.
fn chunk_and_place(
    session: &Arc<Session>,
    running: &mut Running,
) -> (tokio::task::JoinHandle<std::io::Result<()>>, impl Stream<Item = anyhow::Result<Placed>>) {
    let agent = &session.agent;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Batch>(2);
    let params = agent.config.chunking;
    let stdout = running.take_stdout();
    let chunker = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let Some(stdout) = stdout else { return Ok(()) };
        for b in params.batches(stdout, BATCH_SIZE) {
            if tx.blocking_send(b?).is_err() {
                break;
            }
        }
        Ok(())
    });
    let batches = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    // hashing is CPU work: a batch per core (each one in flight holds 1 MiB)
    let (session, concurrency) = (session.clone(), cores().min(agent.config.upload.concurrency));
    let placed = batches
        .map(move |batch| {
            let session = session.clone();
            async move {
                let on_pool = session.clone();
                let (batch, hashed, stored) = tokio::task::spawn_blocking(move || {
                    let key = &on_pool.agent.key;
                    let hashed: Vec<(ChunkId, blake3::Hash)> = batch
                        .chunks()
                        .map(|c| {
                            let h = blake3::hash(c);
                            (ChunkId(key.chunk_id(&h)), h)
                        })
                        .collect();
                    // the table is read from disk: here, off the runtime
                    let stored = hashed.iter().map(|(id, _)| on_pool.known.get(id)).collect::<std::io::Result<Vec<_>>>();
                    (batch, hashed, stored)
                })
                .await?;
                let stored = stored.context("reading the chunk table")?;
                let mut known = Vec::with_capacity(hashed.len());
                for s in stored {
                    known.push(match s {
                        Some(loc) if session.place(loc).await? => Some(loc),
                        _ => None,
                    });
                }
                Ok::<_, anyhow::Error>((batch, hashed, known))
            }
        })
        .buffered(concurrency);
    (chunker, placed)
}

/// The cores this process may use.
pub(super) fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Runs the source through the stages; on any failure or cancellation the
/// source is stopped and nothing is committed.
async fn export(session: &Arc<Session>, job: &JobConfig, tables: &Tables, progress: &Progress) -> anyhow::Result<Exported> {
    let mut running = job.source.start(&session.agent.config_file).await?;
    let killer = running.killer();
    let stop_on_cancel = {
        let cancel = session.cancel.clone();
        tokio::spawn(async move {
            cancel.cancelled().await;
            killer.kill();
        })
    };
    let (chunker, placed) = chunk_and_place(session, &mut running);
    // boxed so that dropping it (on failure) drops the receiver and stops the chunker
    let mut placed = Box::pin(placed);
    let mut packer = Packer::new(session.clone(), Distinct::new(tables.spill(), distinct::RECENT));
    let mut extents = Extents::default();
    let mut chunk_count = 0u64;
    let mut chain = blake3::Hasher::new();
    let mut source_bytes = 0u64;
    let streamed = async {
        loop {
            // a segment sealed while the source pauses goes to its pack at once
            let p = tokio::select! {
                biased;
                outcome = packer.oldest_sealed() => {
                    packer.place_oldest(outcome).await?;
                    continue;
                }
                p = placed.next() => p,
            };
            let Some(p) = p else { break };
            let (batch, hashed, known) = p?;
            for ((chunk, (id, hash)), known) in batch.chunks().zip(hashed).zip(known) {
                let at = match known {
                    Some(k) => packer.known(id, k)?,
                    None => packer.add_new(id, chunk).await?,
                };
                extents.push(at, chunk.len() as u32);
                chunk_count += 1;
                chain.update(hash.as_bytes());
                source_bytes += chunk.len() as u64;
            }
            progress
                .set(source_bytes, || format!("{} new sealed", bascule_core::progress::human(session.new_bytes.load(Ordering::Relaxed))));
        }
        packer.finish().await
    }
    .await;
    drop(placed);
    if let Err(e) = streamed {
        running.killer().kill();
        let _ = chunker.await;
        let _ = running.finish().await;
        stop_on_cancel.abort();
        return Err(e.context(format!("job {}: export aborted, nothing committed (a re-run reuses the packs already sent)", job.name)));
    }
    let chunked = chunker.await?;
    let facts = running.finish().await;
    stop_on_cancel.abort();
    if session.cancel.is_cancelled() {
        bail!("job {}: cancelled, nothing committed (a re-run reuses the packs already sent)", job.name);
    }
    let facts = facts.with_context(|| format!("job {}: the source failed, nothing committed", job.name))?;
    chunked.with_context(|| format!("job {}: reading the source", job.name))?;
    Ok(Exported { packer, extents: extents.extents, chunk_count, stream_hash: chain.finalize().to_hex().to_string(), source_bytes, facts })
}
