//! One export: source → FastCDC → (keyed id, dedup) → seal → both providers,
//! then the sealed index, the signed manifest and HEAD, on each provider that
//! holds every object.
//!
//! The chunker runs on a blocking thread and feeds a bounded channel; sealing
//! runs on the blocking pool; at most `upload.concurrency` chunks are in flight.
//! Memory is bounded by (channel + concurrency) × max chunk size.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context};
use bascule_core::head::Head;
use bascule_core::manifest::{Index, IndexEntry, Manifest, ObjectRef, FORMAT};
use bascule_core::provider::check_ciphertext;
use bascule_core::signed::{self, Kind};
use bascule_core::{hash_hex, layout, seal};
use bytes::Bytes;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::config::JobConfig;
use crate::progress::Progress;
use crate::Agent;

struct RawChunk {
    id: String,
    plain_hash: String,
    data: Vec<u8>,
}

/// Where a chunk of the stream ended up.
enum Placed {
    Object {
        obj: ObjectRef,
        len: u32,
        plain_hash: String,
    },
    /// Already placed earlier in this same stream.
    Repeat {
        key: String,
        len: u32,
        plain_hash: String,
    },
}

/// What one run did, per provider.
#[derive(Debug)]
pub struct SnapshotReport {
    pub name: String,
    pub source_bytes: u64,
    pub chunk_count: u64,
    pub new_bytes: u64,
    pub stored_bytes: u64,
    pub elapsed: std::time::Duration,
    /// Provider name → `Ok` or why it does not hold this snapshot.
    pub providers: Vec<(String, Result<(), String>)>,
}

impl SnapshotReport {
    pub fn degraded(&self) -> bool {
        self.providers.iter().any(|(_, r)| r.is_err())
    }
}

/// State shared by the chunks in flight.
struct Run {
    agent: Arc<Agent>,
    /// Provider i still usable in this run.
    up: Vec<AtomicBool>,
    /// First error that took provider i out of the run.
    why_down: Mutex<Vec<Option<String>>>,
    /// Chunk objects each provider held when the run started.
    listings: Vec<BTreeMap<String, u64>>,
    /// Chunk refs known from the newest signed manifest.
    known: HashMap<String, ObjectRef>,
    new_bytes: AtomicU64,
}

impl Run {
    fn up_mask(&self) -> Vec<bool> {
        self.up.iter().map(|u| u.load(Ordering::SeqCst)).collect()
    }

    fn take_down(&self, i: usize, why: String) {
        if self.up[i].swap(false, Ordering::SeqCst) {
            let p = &self.agent.replicated.replicas[i].provider;
            tracing::error!(provider = %p, error = %why, "Provider failed; continuing on the other one (degraded)");
            self.why_down.lock().expect("lock")[i] = Some(why);
        }
    }

    fn any_up(&self) -> bool {
        self.up.iter().any(|u| u.load(Ordering::SeqCst))
    }

    /// Writes `bytes` to the providers in `which`; a failure takes that provider out.
    async fn put(&self, key: &str, bytes: Bytes, which: &[bool]) {
        let n = which.iter().filter(|w| **w).count() as u64;
        self.agent.throttle.acquire(bytes.len() as u64 * n).await;
        let results = self.agent.replicated.put(key, bytes, which).await;
        for (name, r) in results {
            if let Err(e) = r {
                let i = self
                    .agent
                    .replicated
                    .replicas
                    .iter()
                    .position(|x| x.provider == name)
                    .expect("known provider");
                self.take_down(i, e.to_string());
            }
        }
    }

    /// Places one chunk: reuse, copy between providers, or seal and upload.
    async fn place(&self, raw: RawChunk) -> anyhow::Result<Placed> {
        let key = layout::chunk(&raw.id);
        let len = raw.data.len() as u32;
        let up = self.up_mask();
        let has: Vec<bool> = self.listings.iter().zip(&up).map(|(l, u)| *u && l.contains_key(&key)).collect();
        let lacking: Vec<bool> = up.iter().zip(&has).map(|(u, h)| *u && !h).collect();
        let obj = if has.iter().any(|h| *h) {
            // Reuse what a provider already holds: same ciphertext everywhere.
            match self.known.get(&key) {
                Some(o) if !lacking.iter().any(|l| *l) => o.clone(),
                known => {
                    let holder = has.iter().position(|h| *h).expect("a holder");
                    let r = &self.agent.replicated.replicas[holder];
                    let bytes = r.get(&key).await?.with_context(|| format!("{key} vanished from {}", r.provider))?;
                    let obj = ObjectRef {
                        key: key.clone(),
                        len: bytes.len() as u64,
                        hash: hash_hex(&bytes),
                    };
                    if let Some(k) = known {
                        check_ciphertext(k, &r.provider, &bytes)?;
                    }
                    if lacking.iter().any(|l| *l) {
                        self.put(&key, bytes, &lacking).await;
                    }
                    obj
                }
            }
        } else {
            let recipients = self.agent.config.recipients.clone();
            let sealed = tokio::task::spawn_blocking(move || seal::seal(&raw.data, &recipients)).await??;
            let obj = ObjectRef {
                key: key.clone(),
                len: sealed.len() as u64,
                hash: hash_hex(&sealed),
            };
            self.put(&key, Bytes::from(sealed), &lacking).await;
            self.new_bytes.fetch_add(obj.len, Ordering::Relaxed);
            obj
        };
        if !self.any_up() {
            bail!("every provider failed: {}", self.down_reasons());
        }
        Ok(Placed::Object {
            obj,
            len,
            plain_hash: raw.plain_hash,
        })
    }

    fn down_reasons(&self) -> String {
        let why = self.why_down.lock().expect("lock");
        self.agent
            .replicated
            .replicas
            .iter()
            .zip(why.iter())
            .filter_map(|(r, w)| w.as_ref().map(|w| format!("{}: {w}", r.provider)))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Reads and verifies HEAD on each usable provider; returns the highest
/// sequence and the newest snapshot's name.
async fn read_heads(agent: &Agent, up: &[bool]) -> (u64, Option<String>) {
    let trusted = [agent.key.verify_key()];
    let mut best: (u64, Option<String>) = (0, None);
    for (r, u) in agent.replicated.replicas.iter().zip(up) {
        if !*u {
            continue;
        }
        match r.get(layout::HEAD).await {
            Ok(Some(b)) => match signed::open::<Head>(Kind::Head, &b, &trusted, layout::HEAD) {
                Ok((h, _)) if h.sequence >= best.0 => best = (h.sequence, h.latest_snapshot),
                Ok(_) => {}
                Err(e) => tracing::warn!(provider = %r.provider, error = %e, "Ignoring a HEAD that does not verify"),
            },
            Ok(None) => {}
            Err(e) => tracing::warn!(provider = %r.provider, error = %e, "Cannot read HEAD"),
        }
    }
    best
}

pub async fn run(agent: Arc<Agent>, job: &JobConfig, cancel: CancellationToken, progress: &Progress) -> anyhow::Result<SnapshotReport> {
    let t0 = Instant::now();
    let started_at = chrono::Utc::now();
    let replicas = &agent.replicated.replicas;
    let trusted = [agent.key.verify_key()];

    progress.phase(&format!("job {}: listing what each provider holds", job.name));
    let mut listings = Vec::new();
    let mut why_down = Vec::new();
    for r in replicas {
        match r.list(layout::CHUNKS).await {
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
    let up: Vec<bool> = why_down.iter().map(Option::is_none).collect();
    if !up.iter().any(|u| *u) {
        bail!(
            "no provider is reachable: {}",
            why_down.iter().flatten().cloned().collect::<Vec<_>>().join("; ")
        );
    }
    let (head_seq, latest) = read_heads(&agent, &up).await;

    // Chunk refs of the newest snapshot, so unchanged chunks cost nothing.
    let mut known = HashMap::new();
    if let Some(name) = latest {
        let key = layout::manifest(&name);
        match agent
            .replicated
            .get_checked(&key, 0, |_, b| signed::open::<Manifest>(Kind::Manifest, &b, &trusted, &key))
            .await
        {
            Ok(((m, _), _)) => known.extend(m.objects.into_iter().map(|o| (o.key.clone(), o))),
            Err(e) => tracing::warn!(error = %e, "Cannot read the previous manifest; unchanged chunks will be re-read to be hashed"),
        }
    }

    let run = Arc::new(Run {
        agent: agent.clone(),
        up: up.iter().map(|u| AtomicBool::new(*u)).collect(),
        why_down: Mutex::new(why_down),
        listings,
        known,
        new_bytes: AtomicU64::new(0),
    });

    progress.phase(&format!("job {}: export started", job.name));
    let mut running = job.source.start(&agent.config_file).await?;
    let killer = running.killer();
    let stop_on_cancel = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            cancel.cancelled().await;
            killer.kill();
        })
    };

    // Chunker thread: bounded channel towards the uploads.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<RawChunk>(4);
    let params = agent.config.chunking;
    let key = agent.key.clone();
    let mut stdout = running.take_stdout();
    let chunker = tokio::task::spawn_blocking(move || -> std::io::Result<(String, u64)> {
        let mut whole = blake3::Hasher::new();
        let mut total = 0u64;
        for c in params.chunks(stdout.take().expect("stdout")) {
            let data = c?;
            whole.update(&data);
            total += data.len() as u64;
            let raw = RawChunk {
                id: key.chunk_id(&data),
                plain_hash: hash_hex(&data),
                data,
            };
            if tx.blocking_send(raw).is_err() {
                break;
            }
        }
        Ok((whole.finalize().to_hex().to_string(), total))
    });

    let chunks = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let mut seen = HashSet::new();
    // boxed so that dropping it (on failure) drops the receiver and stops the chunker
    let mut placed = Box::pin(
        chunks
            .map(|raw| {
                let run = run.clone();
                let key = layout::chunk(&raw.id);
                let repeat = !seen.insert(key.clone());
                async move {
                    if repeat {
                        return Ok(Placed::Repeat {
                            key,
                            len: raw.data.len() as u32,
                            plain_hash: raw.plain_hash,
                        });
                    }
                    run.place(raw).await
                }
            })
            .buffered(agent.config.upload.concurrency),
    );

    let mut objects: Vec<ObjectRef> = Vec::new();
    let mut position: HashMap<String, u32> = HashMap::new();
    let mut entries = Vec::new();
    let mut source_bytes = 0u64;
    let mut failure = None;
    while let Some(p) = placed.next().await {
        match p {
            Ok(Placed::Object { obj, len, plain_hash }) => {
                let pos = objects.len() as u32;
                position.insert(obj.key.clone(), pos);
                objects.push(obj);
                entries.push(IndexEntry {
                    object: pos,
                    len,
                    hash: plain_hash,
                });
                source_bytes += len as u64;
            }
            Ok(Placed::Repeat { key, len, plain_hash }) => {
                let pos = *position.get(&key).expect("a repeat follows its first occurrence");
                entries.push(IndexEntry {
                    object: pos,
                    len,
                    hash: plain_hash,
                });
                source_bytes += len as u64;
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
        progress.update(source_bytes, run.new_bytes.load(Ordering::Relaxed));
    }
    drop(placed);
    if let Some(e) = failure {
        running.killer().kill();
        let _ = chunker.await;
        let _ = running.finish().await;
        stop_on_cancel.abort();
        return Err(e.context(format!("job {}: export aborted, nothing committed", job.name)));
    }
    let chunked = chunker.await?;
    let facts = running.finish().await;
    stop_on_cancel.abort();
    if cancel.is_cancelled() {
        bail!(
            "job {}: cancelled, nothing committed (a re-run reuses the chunks already sent)",
            job.name
        );
    }
    let facts = facts.with_context(|| format!("job {}: the source failed, nothing committed", job.name))?;
    let (stream_hash, total) = chunked.with_context(|| format!("job {}: reading the source", job.name))?;
    debug_assert_eq!(total, source_bytes);
    progress.phase(&format!("job {}: export read, committing", job.name));

    // Index (sealed) → manifest (signed) → HEAD (signed), on every provider still up.
    let name = layout::new_snapshot_name(started_at);
    let index = Index {
        format: FORMAT,
        chunks: entries,
        stream_hash,
        row_counts: facts.row_counts,
        source: facts.source,
    };
    let index_json = serde_json::to_vec(&index)?;
    let recipients = agent.config.recipients.clone();
    let sealed_index = tokio::task::spawn_blocking(move || seal::seal(&index_json, &recipients)).await??;
    let index_ref = ObjectRef {
        key: layout::index(&name),
        len: sealed_index.len() as u64,
        hash: hash_hex(&sealed_index),
    };
    run.put(&index_ref.key, Bytes::from(sealed_index), &run.up_mask()).await;

    let new_bytes = run.new_bytes.load(Ordering::Relaxed) + index_ref.len;
    let manifest = Manifest {
        format: FORMAT,
        tenant: agent.config.tenant.clone(),
        name: name.clone(),
        kind: job.source.kind(),
        job: job.name.clone(),
        host: hostname(),
        started_at,
        finished_at: chrono::Utc::now(),
        source_bytes,
        chunk_count: index.chunks.len() as u64,
        new_bytes,
        stored_bytes: objects.iter().map(|o| o.len).sum::<u64>() + index_ref.len,
        recipients: agent.config.recipients.iter().map(|r| r.to_string()).collect(),
        chunker: agent.config.chunking,
        index: index_ref,
        objects,
    };
    let manifest_bytes = Bytes::from(signed::sign(Kind::Manifest, &manifest, &agent.key));
    run.put(&layout::manifest(&name), manifest_bytes, &run.up_mask()).await;

    let sequence = agent.next_sequence(head_seq)?;
    let head = Head {
        format: FORMAT,
        tenant: agent.config.tenant.clone(),
        sequence,
        latest_snapshot: Some(name.clone()),
        latest_wal: None,
        agent_time: chrono::Utc::now(),
    };
    run.put(
        layout::HEAD,
        Bytes::from(signed::sign(Kind::Head, &head, &agent.key)),
        &run.up_mask(),
    )
    .await;
    if !run.any_up() {
        bail!("job {}: every provider failed while committing: {}", job.name, run.down_reasons());
    }

    let why = run.why_down.lock().expect("lock").clone();
    let providers: Vec<_> = replicas
        .iter()
        .zip(why)
        .map(|(r, w)| {
            (
                r.provider.clone(),
                match w {
                    None => Ok(()),
                    Some(w) => Err(w),
                },
            )
        })
        .collect();
    let report = SnapshotReport {
        name,
        source_bytes,
        chunk_count: manifest.chunk_count,
        new_bytes,
        stored_bytes: manifest.stored_bytes,
        elapsed: t0.elapsed(),
        providers,
    };
    if report.degraded() {
        agent.backlog_add(&report)?;
    }
    Ok(report)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}
