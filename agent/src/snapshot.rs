//! One export: source → FastCDC → keyed id → dedup → seal → packs → both
//! providers; then the sealed index, the signed manifest and HEAD, on each
//! provider that holds every pack.
//!
//! Stages: the chunker runs on a blocking thread and feeds a bounded channel
//! with batches of chunks; batches are hashed in parallel on the blocking
//! pool; new chunks are gathered into segments, up to `upload.concurrency`
//! sealed at once; sealed segments are appended, in stream order, to a pack
//! that is uploaded once full while the next one fills. Memory is bounded by
//! the channel, the batches and segments in flight and a few packs, whatever
//! the size of the database.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context};
use bascule_core::chunker::Batch;
use bascule_core::head::Head;
use bascule_core::manifest::{Extent, Index, Manifest, ObjectRef, Segment, FORMAT};
use bascule_core::provider::check_ciphertext;
use bascule_core::retention::{read_condemned, Condemned};
use bascule_core::signed::{self, Kind};
use bascule_core::{hash_hex, layout, seal};
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::chunk_id::{ChunkId, IdMap};
use crate::config::JobConfig;
use crate::progress::Progress;
use crate::Agent;

/// A segment stored by an earlier snapshot or an earlier (killed) run.
struct KnownSegment {
    pack: Arc<ObjectRef>,
    at: u64,
    len: u32,
    hash: String,
}

/// A chunk stored by an earlier snapshot or run: its segment (a position in
/// [`Known::segments`]), and where it starts in the segment's plaintext.
#[derive(Clone, Copy)]
struct KnownBlob {
    segment: u32,
    offset: u32,
}

/// The chunks this agent already stored, 24 bytes each in memory.
#[derive(Default)]
struct Known {
    segments: Vec<KnownSegment>,
    blobs: IdMap<KnownBlob>,
}

/// Where a chunk of this run lies: a position in the run's segment table
/// (`u32::MAX` until its segment is sealed) and its offset in the segment's
/// plaintext.
struct BlobRef {
    id: ChunkId,
    segment: u32,
    offset: u32,
}

/// A segment of a pack, and the chunks in it: (chunk id, offset in the plaintext).
#[derive(Serialize, Deserialize)]
struct JournalSegment {
    at: u64,
    len: u32,
    hash: String,
    chunks: Vec<(ChunkId, u32)>,
}

/// One line of the agent's local chunk tables: a pack, its segments and the
/// chunks in them.
/// `<job>.<recipients>.chunks` holds those of the last committed snapshot
/// (what the next run can reuse); `<job>.<recipients>.packs.journal` those of
/// packs uploaded since, not committed yet (so that a killed run's packs are
/// reused). `<recipients>` names the set of age recipients the packs are
/// sealed to: after a change of recipients (a key rotation), nothing sealed
/// to the old set is reused, so every new snapshot opens with the new
/// identity. Chunk ids never leave the site; losing these files only costs a
/// full upload.
#[derive(Serialize, Deserialize)]
struct JournalEntry {
    pack: ObjectRef,
    segments: Vec<JournalSegment>,
}

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

/// State shared by the work in flight.
struct Run {
    agent: Arc<Agent>,
    /// Provider i still usable in this run.
    up: Vec<AtomicBool>,
    /// First error that took provider i out of the run.
    why_down: Mutex<Vec<Option<String>>>,
    /// Packs each provider held when the run started (key → length).
    listings: Vec<BTreeMap<String, u64>>,
    known: Known,
    /// Packs being copied to a provider that lacks them.
    copying: Mutex<HashSet<String>>,
    new_bytes: AtomicU64,
    journal: PathBuf,
    cancel: CancellationToken,
    /// Packs a prune condemned: never reused (see `bascule_core::retention`).
    condemned: HashSet<String>,
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

    fn down_reasons(&self) -> String {
        let why = self.why_down.lock().expect("lock");
        let replicas = &self.agent.replicated.replicas;
        replicas
            .iter()
            .zip(why.iter())
            .filter_map(|(r, w)| w.as_ref().map(|w| format!("{}: {w}", r.provider)))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Writes `bytes` to the providers in `which`; a failure takes that
    /// provider out. Fails only when the run is cancelled.
    async fn put(&self, key: &str, bytes: Bytes, which: &[bool]) -> anyhow::Result<()> {
        let n = which.iter().filter(|w| **w).count() as u64;
        tokio::select! {
            _ = self.agent.throttle.acquire(bytes.len() as u64 * n) => {}
            _ = self.cancel.cancelled() => bail!("cancelled"),
        }
        self.write(key, bytes, which).await;
        Ok(())
    }

    /// Writes now, unthrottled and uncancellable; a failure takes that provider out.
    async fn write(&self, key: &str, bytes: Bytes, which: &[bool]) {
        for (name, r) in self.agent.replicated.put(key, bytes, which).await {
            if let Err(e) = r {
                let i = self.agent.replicated.replicas.iter().position(|x| x.provider == name).expect("known provider");
                self.take_down(i, e.to_string());
            }
        }
    }

    /// Which usable providers hold `pack` (with the right length).
    fn holders(&self, pack: &ObjectRef) -> Vec<bool> {
        if self.condemned.contains(&pack.key) {
            return vec![false; self.listings.len()];
        }
        self.listings.iter().zip(self.up_mask()).map(|(l, u)| u && l.get(&pack.key) == Some(&pack.len)).collect()
    }

    /// Decides one chunk: known (`true`: on every usable provider, or on one,
    /// its pack then copied across, ciphertext only) or new (`false`: seal it).
    async fn place(&self, id: &ChunkId) -> anyhow::Result<bool> {
        if let Some(k) = self.known.blobs.get(id) {
            let pack = &self.known.segments[k.segment as usize].pack;
            let has = self.holders(pack);
            if has.iter().any(|h| *h) {
                let lacking: Vec<bool> = self.up_mask().iter().zip(&has).map(|(u, h)| *u && !h).collect();
                if lacking.iter().any(|l| *l) && self.copying.lock().expect("lock").insert(pack.key.clone()) {
                    let from = &self.agent.replicated.replicas[has.iter().position(|h| *h).expect("a holder")];
                    let bytes = from.get(&pack.key).await?.with_context(|| format!("{} vanished from {}", pack.key, from.provider))?;
                    check_ciphertext(pack, &from.provider, &bytes)?;
                    self.put(&pack.key, bytes, &lacking).await?;
                }
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Uploads a full pack and records it in the journal.
    async fn upload_pack(self: Arc<Self>, pack: ObjectRef, bytes: Bytes, segments: Vec<JournalSegment>) -> anyhow::Result<()> {
        self.put(&pack.key, bytes, &self.up_mask()).await?;
        if !self.any_up() {
            bail!("every provider failed: {}", self.down_reasons());
        }
        self.new_bytes.fetch_add(pack.len, Ordering::Relaxed);
        let line = serde_json::to_string(&JournalEntry { pack, segments })? + "\n";
        let journal = self.journal.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&journal)?;
            f.write_all(line.as_bytes())?;
            f.sync_data()
        })
        .await?
        .context("writing the pack journal")?;
        Ok(())
    }
}

/// Plaintext of consecutive new chunks sealed together: large enough for
/// zstd to compress well and for age's per-file header (≈ 200 bytes, one
/// X25519 agreement to seal and to open) to cost little; small enough that a
/// restore needing one chunk of an old segment reads and decrypts little more.
pub const SEGMENT_SIZE: usize = 1 << 20;

/// Bytes the chunker hands on at once (hashed together on the blocking pool).
const BATCH_SIZE: usize = 1 << 20;

/// A segment being sealed on the blocking pool: its ciphertext and the
/// ciphertext's hash.
type Sealing = tokio::task::JoinHandle<bascule_core::Result<(Vec<u8>, String)>>;
type SealOutcome = Result<bascule_core::Result<(Vec<u8>, String)>, tokio::task::JoinError>;

/// What the snapshot references so far (packs, segments, chunks), the
/// segment being filled, the segments being sealed, and the pack being filled.
struct Packer {
    run: Arc<Run>,
    pack_size: usize,
    objects: Vec<ObjectRef>,
    object_pos: HashMap<String, u32>,
    segments: Vec<Segment>,
    /// Segment hash → position in `segments`.
    segment_pos: HashMap<String, u32>,
    blobs: Vec<BlobRef>,
    blob_pos: IdMap<u32>,
    /// Current segment: plaintext and the blob positions of its chunks.
    filling: (Vec<u8>, Vec<u32>),
    /// Segments being sealed, in stream order.
    sealing: std::collections::VecDeque<(Vec<u32>, Sealing)>,
    /// Current pack: its slot in `objects`, bytes, and segments.
    pack: Option<(u32, Vec<u8>, Vec<JournalSegment>)>,
    uploads: JoinSet<anyhow::Result<()>>,
}

impl Packer {
    fn object(&mut self, o: &ObjectRef) -> u32 {
        if let Some(p) = self.object_pos.get(&o.key) {
            return *p;
        }
        let p = self.objects.len() as u32;
        self.objects.push(o.clone());
        self.object_pos.insert(o.key.clone(), p);
        p
    }

    fn add_segment(&mut self, s: Segment) -> u32 {
        let p = self.segments.len() as u32;
        self.segment_pos.insert(s.hash.clone(), p);
        self.segments.push(s);
        p
    }

    fn add_blob(&mut self, b: BlobRef) -> u32 {
        let p = self.blobs.len() as u32;
        self.blob_pos.insert(b.id, p);
        self.blobs.push(b);
        p
    }

    /// The blob position of a chunk already stored.
    fn known(&mut self, id: ChunkId) -> u32 {
        if let Some(p) = self.blob_pos.get(&id) {
            return *p;
        }
        let run = self.run.clone();
        let k = *run.known.blobs.get(&id).expect("a known blob");
        let ks = &run.known.segments[k.segment as usize];
        let segment = match self.segment_pos.get(&ks.hash) {
            Some(s) => *s,
            None => {
                let pack = self.object(&ks.pack);
                self.add_segment(Segment { pack, at: ks.at, len: ks.len, hash: ks.hash.clone() })
            }
        };
        self.add_blob(BlobRef { id, segment, offset: k.offset })
    }

    /// Adds a new chunk to the current segment; seals the segment once full.
    async fn add_new(&mut self, id: ChunkId, data: &[u8]) -> anyhow::Result<u32> {
        if let Some(p) = self.blob_pos.get(&id) {
            return Ok(*p); // twice in one stream
        }
        let offset = self.filling.0.len() as u32;
        let pos = self.add_blob(BlobRef { id, segment: u32::MAX, offset }); // placed when sealed
        self.filling.0.extend_from_slice(data);
        self.filling.1.push(pos);
        if self.filling.0.len() >= SEGMENT_SIZE {
            self.seal_segment().await?;
        }
        Ok(pos)
    }

    /// Starts sealing the current segment; keeps at most `concurrency`
    /// segments in the sealer, placing finished ones in stream order (the
    /// export loop also places each one as soon as it is sealed).
    async fn seal_segment(&mut self) -> anyhow::Result<()> {
        let (data, members) = std::mem::take(&mut self.filling);
        if !members.is_empty() {
            let recipients = self.run.agent.config.recipients.clone();
            let sealing = tokio::task::spawn_blocking(move || {
                seal::seal(&data, &recipients).map(|c| {
                    let h = hash_hex(&c);
                    (c, h)
                })
            });
            self.sealing.push_back((members, sealing));
        }
        while self.sealing.len() > self.run.agent.config.upload.concurrency {
            self.place_sealed().await?;
        }
        Ok(())
    }

    /// Waits for the oldest segment in the sealer to be sealed, without
    /// taking it: dropping this future loses nothing. Never ends when the
    /// sealer is empty.
    async fn oldest_sealed(&mut self) -> SealOutcome {
        std::future::poll_fn(|cx| match self.sealing.front_mut() {
            Some((_, handle)) => std::future::Future::poll(std::pin::Pin::new(handle), cx),
            None => std::task::Poll::Pending,
        })
        .await
    }

    /// Waits for the oldest segment in the sealer and places it.
    async fn place_sealed(&mut self) -> anyhow::Result<()> {
        if self.sealing.is_empty() {
            return Ok(());
        }
        let outcome = self.oldest_sealed().await;
        self.place_oldest(outcome).await
    }

    /// Appends the oldest segment, sealed (`outcome`), to the pack; uploads
    /// the pack once full.
    async fn place_oldest(&mut self, outcome: SealOutcome) -> anyhow::Result<()> {
        let (members, _) = self.sealing.pop_front().expect("a segment in the sealer");
        let (sealed, hash) = outcome??;
        if self.pack.is_none() {
            let slot = self.objects.len() as u32;
            self.objects.push(ObjectRef { key: String::new(), len: 0, hash: String::new() }); // named when full
            self.pack = Some((slot, Vec::new(), Vec::new()));
        }
        let (slot, at) = self.pack.as_ref().map(|(slot, bytes, _)| (*slot, bytes.len() as u64)).expect("a pack");
        let len = sealed.len() as u32;
        let segment = self.add_segment(Segment { pack: slot, at, len, hash: hash.clone() });
        let mut chunks = Vec::with_capacity(members.len());
        for pos in members {
            let b = &mut self.blobs[pos as usize];
            b.segment = segment;
            chunks.push((b.id, b.offset));
        }
        let (_, bytes, segments) = self.pack.as_mut().expect("a pack");
        bytes.extend_from_slice(&sealed);
        segments.push(JournalSegment { at, len, hash, chunks });
        if bytes.len() >= self.pack_size {
            self.upload_pack().await?;
        }
        Ok(())
    }

    /// Names the current pack by its hash and uploads it in the background
    /// (at most two packs in flight).
    async fn upload_pack(&mut self) -> anyhow::Result<()> {
        let Some((slot, bytes, segments)) = self.pack.take() else { return Ok(()) };
        let hash = hash_hex(&bytes);
        let obj = ObjectRef { key: layout::pack(&hash), len: bytes.len() as u64, hash };
        self.objects[slot as usize] = obj.clone();
        self.object_pos.insert(obj.key.clone(), slot);
        while self.uploads.len() >= 2 {
            if let Some(Err(e) | Ok(Err(e))) = self.uploads.join_next().await.map(|r| r.map_err(anyhow::Error::from)) {
                return Err(e);
            }
        }
        self.uploads.spawn(self.run.clone().upload_pack(obj, Bytes::from(bytes), segments));
        Ok(())
    }

    /// Seals and uploads everything still pending; waits for every upload.
    async fn finish(&mut self) -> anyhow::Result<()> {
        self.seal_segment().await?;
        while !self.sealing.is_empty() {
            self.place_sealed().await?;
        }
        self.upload_pack().await?;
        while let Some(r) = self.uploads.join_next().await {
            r??;
        }
        Ok(())
    }

    /// The stream, in order, as extents of the segment table.
    fn extents(&self, entries: &[(u32, u32)]) -> Vec<Extent> {
        let mut extents: Vec<Extent> = Vec::new();
        let mut next = (u32::MAX, 0u32); // where the last extent ends
        for &(blob, len) in entries {
            let b = &self.blobs[blob as usize];
            match extents.last_mut() {
                Some(e) if next == (b.segment, b.offset) => e.lens.push(len),
                _ => extents.push(Extent { segment: b.segment, offset: b.offset, lens: vec![len] }),
            }
            next = (b.segment, b.offset + len);
        }
        extents
    }
}

/// Reads and verifies HEAD on each usable provider; returns the highest sequence.
pub(crate) async fn read_heads(agent: &Agent, up: &[bool]) -> u64 {
    let trusted = [agent.key.verify_key()];
    let mut best = 0;
    for (r, u) in agent.replicated.replicas.iter().zip(up) {
        if !*u {
            continue;
        }
        match r.get(layout::HEAD).await {
            Ok(Some(b)) => match signed::open::<Head>(Kind::Head, &b, &trusted, layout::HEAD) {
                Ok((h, _)) => best = best.max(h.sequence),
                Err(e) => tracing::warn!(provider = %r.provider, error = %e, "Ignoring a HEAD that does not verify"),
            },
            Ok(None) => {}
            Err(e) => tracing::warn!(provider = %r.provider, error = %e, "Cannot read HEAD"),
        }
    }
    best
}

/// A short name for a set of recipients (whatever their order).
fn recipients_tag(recipients: &[bascule_core::keys::Recipient]) -> String {
    let mut all: Vec<String> = recipients.iter().map(|r| r.to_string()).collect();
    all.sort();
    all.dedup();
    blake3::hash(all.join("\n").as_bytes()).to_hex()[..12].to_string()
}

/// Chunks this agent already stored: those of the last committed snapshot
/// and those of packs uploaded by a run that did not commit. Read line by
/// line: a line cut by a crash (or written by an older format) is ignored,
/// its pack is simply not reused.
fn known_blobs(files: &[&std::path::Path]) -> anyhow::Result<Known> {
    use std::io::BufRead;
    let mut known = Known::default();
    for file in files {
        let f = match std::fs::File::open(file) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| file.display().to_string()),
        };
        for line in std::io::BufReader::new(f).lines() {
            let line = line.with_context(|| file.display().to_string())?;
            let Ok(entry) = serde_json::from_str::<JournalEntry>(&line) else { continue };
            let pack = Arc::new(entry.pack);
            for s in entry.segments {
                let segment = known.segments.len() as u32;
                known.segments.push(KnownSegment { pack: pack.clone(), at: s.at, len: s.len, hash: s.hash });
                for (id, offset) in s.chunks {
                    known.blobs.entry(id).or_insert(KnownBlob { segment, offset });
                }
            }
        }
    }
    Ok(known)
}

/// Writes the chunk table of a committed snapshot, one line per pack, to `out`.
fn write_chunk_table(out: &mut dyn Write, objects: &[ObjectRef], segments: &[Segment], blobs: &[BlobRef]) -> std::io::Result<()> {
    let pack_of = |b: &BlobRef| segments[b.segment as usize].pack;
    let mut sorted: Vec<&BlobRef> = blobs.iter().collect();
    sorted.sort_by_key(|b| (pack_of(b), b.segment));
    for in_pack in sorted.chunk_by(|a, b| pack_of(a) == pack_of(b)) {
        let entry = JournalEntry {
            pack: objects[pack_of(in_pack[0]) as usize].clone(),
            segments: in_pack
                .chunk_by(|a, b| a.segment == b.segment)
                .map(|in_segment| {
                    let seg = &segments[in_segment[0].segment as usize];
                    let chunks = in_segment.iter().map(|b| (b.id, b.offset)).collect();
                    JournalSegment { at: seg.at, len: seg.len, hash: seg.hash.clone(), chunks }
                })
                .collect(),
        };
        serde_json::to_writer(&mut *out, &entry)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// Packs of condemned lists, read from the providers in `up`.
async fn condemned_lists(agent: &Agent, up: &[bool]) -> bascule_core::Result<BTreeMap<String, Condemned>> {
    let replicas: Vec<_> = agent.replicated.replicas.iter().zip(up).filter(|(_, u)| **u).map(|(r, _)| r.clone()).collect();
    read_condemned(&replicas).await
}

/// Refuses to commit a snapshot that references a pack a prune condemned
/// after this run started, once the commit deadline of that condemnation
/// has passed (a later prune may delete the pack).
fn check_condemned(objects: &[ObjectRef], lists: &BTreeMap<String, Condemned>) -> anyhow::Result<()> {
    let now = chrono::Utc::now();
    let used: HashSet<&str> = objects.iter().map(|o| o.key.as_str()).collect();
    for (key, list) in lists {
        let hit: Vec<&str> = list.packs.iter().map(|p| p.key.as_str()).filter(|k| used.contains(k)).collect();
        if hit.is_empty() {
            continue;
        }
        if now >= list.commit_deadline() {
            bail!(
                "{} pack(s) this export reuses (first {}) were condemned by a prune at {} ({key}) and may be deleted from {}; \
                 nothing committed: run the job again, it seals those chunks anew",
                hit.len(),
                hit[0],
                list.condemned_at.to_rfc3339(),
                list.deletable_from().to_rfc3339()
            );
        }
        tracing::info!(packs = hit.len(), list = %key, "Packs condemned during this export are referenced again; committing before the deadline keeps them");
    }
    Ok(())
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
    let replicas = &agent.replicated.replicas;

    progress.phase(&format!("job {}: listing what each provider holds", job.name));
    let mut listings = Vec::new();
    let mut why_down = Vec::new();
    for r in replicas {
        match r.list(layout::PACKS).await {
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
        bail!("no provider is reachable: {}", why_down.iter().flatten().cloned().collect::<Vec<_>>().join("; "));
    }
    let head_seq = read_heads(&agent, &up).await;
    let sealed_to = recipients_tag(&agent.config.recipients);
    let journal = agent.config.state_dir.join(format!("{}.{sealed_to}.packs.journal", job.name));
    let table = agent.config.state_dir.join(format!("{}.{sealed_to}.chunks", job.name));
    let mut known = known_blobs(&[&table, &journal])?;
    let condemned: HashSet<String> = match condemned_lists(&agent, &up).await {
        Ok(lists) => lists.values().flat_map(|l| l.packs.iter().map(|p| p.key.clone())).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "Cannot read the prune's condemned lists: this run reuses no earlier pack");
            known = Known::default();
            HashSet::new()
        }
    };

    let run = Arc::new(Run {
        agent: agent.clone(),
        up: up.iter().map(|u| AtomicBool::new(*u)).collect(),
        why_down: Mutex::new(why_down),
        listings,
        known,
        copying: Mutex::default(),
        new_bytes: AtomicU64::new(0),
        journal: journal.clone(),
        cancel: cancel.clone(),
        condemned,
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

    // Stage one: the chunker thread, bounded channel towards stage two.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Batch>(4);
    let params = agent.config.chunking;
    let mut stdout = running.take_stdout();
    let chunker = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        for b in params.batches(stdout.take().expect("stdout"), BATCH_SIZE) {
            if tx.blocking_send(b?).is_err() {
                break;
            }
        }
        Ok(())
    });

    // Stage two: each batch's chunks hashed on the blocking pool, then each
    // chunk known or new (copying a known pack a provider lacks); batches in
    // parallel, results in stream order. A chunk repeated in the stream is
    // recognised by stage three.
    let batches = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    // boxed so that dropping it (on failure) drops the receiver and stops the chunker
    let mut placed = Box::pin(
        batches
            .map(|batch| {
                let run = run.clone();
                let key = agent.key.clone();
                async move {
                    let (batch, hashed) = tokio::task::spawn_blocking(move || {
                        let hashed: Vec<(ChunkId, blake3::Hash)> = batch
                            .chunks()
                            .map(|c| {
                                let h = blake3::hash(c);
                                (ChunkId(key.chunk_id(&h)), h)
                            })
                            .collect();
                        (batch, hashed)
                    })
                    .await?;
                    let mut known = Vec::with_capacity(hashed.len());
                    for (id, _) in &hashed {
                        known.push(run.place(id).await?);
                    }
                    Ok::<_, anyhow::Error>((batch, hashed, known))
                }
            })
            .buffered(agent.config.upload.concurrency),
    );

    // Stage three: new chunks into segments, sealed in parallel, laid out in
    // packs in stream order; full packs upload in the background.
    let mut packer = Packer {
        run: run.clone(),
        pack_size: agent.config.upload.pack_size.0 as usize,
        objects: Vec::new(),
        object_pos: HashMap::new(),
        segments: Vec::new(),
        segment_pos: HashMap::new(),
        blobs: Vec::new(),
        blob_pos: IdMap::default(),
        filling: Default::default(),
        sealing: Default::default(),
        pack: None,
        uploads: JoinSet::new(),
    };
    // (blob position, length) of each chunk, in stream order
    let mut entries: Vec<(u32, u32)> = Vec::new();
    let mut chain = blake3::Hasher::new();
    let mut source_bytes = 0u64;
    let mut failure: Option<anyhow::Error> = None;
    'stream: loop {
        // a segment sealed while the source pauses goes to its pack at once
        let p = tokio::select! {
            biased;
            outcome = packer.oldest_sealed() => {
                if let Err(e) = packer.place_oldest(outcome).await {
                    failure = Some(e);
                    break;
                }
                continue;
            }
            p = placed.next() => p,
        };
        let (batch, hashed, known) = match p {
            None => break,
            Some(Ok(p)) => p,
            Some(Err(e)) => {
                failure = Some(e);
                break;
            }
        };
        for ((chunk, (id, hash)), known) in batch.chunks().zip(hashed).zip(known) {
            let blob = if known { Ok(packer.known(id)) } else { packer.add_new(id, chunk).await };
            match blob {
                Ok(blob) => entries.push((blob, chunk.len() as u32)),
                Err(e) => {
                    failure = Some(e);
                    break 'stream;
                }
            }
            chain.update(hash.as_bytes());
            source_bytes += chunk.len() as u64;
        }
        progress.update(source_bytes, run.new_bytes.load(Ordering::Relaxed));
    }
    drop(placed);
    if failure.is_none() {
        failure = packer.finish().await.err();
    }
    if let Some(e) = failure {
        running.killer().kill();
        let _ = chunker.await;
        let _ = running.finish().await;
        stop_on_cancel.abort();
        return Err(e.context(format!("job {}: export aborted, nothing committed (a re-run reuses the packs already sent)", job.name)));
    }
    let chunked = chunker.await?;
    let facts = running.finish().await;
    stop_on_cancel.abort();
    if cancel.is_cancelled() {
        bail!("job {}: cancelled, nothing committed (a re-run reuses the packs already sent)", job.name);
    }
    let facts = facts.with_context(|| format!("job {}: the source failed, nothing committed", job.name))?;
    chunked.with_context(|| format!("job {}: reading the source", job.name))?;
    progress.phase(&format!("job {}: export read, committing", job.name));

    // Index (sealed) → manifest (signed) → HEAD (signed), on every provider still up.
    let name = layout::new_snapshot_name(started_at);
    let index = Index {
        format: FORMAT,
        segments: packer.segments.clone(),
        extents: packer.extents(&entries),
        stream_hash: chain.finalize().to_hex().to_string(),
        row_counts: facts.row_counts,
        source: facts.source,
    };
    let index_json = serde_json::to_vec(&index)?;
    let recipients = agent.config.recipients.clone();
    let sealed_index = tokio::task::spawn_blocking(move || seal::seal(&index_json, &recipients)).await??;
    let index_ref = ObjectRef { key: layout::index(&name), len: sealed_index.len() as u64, hash: hash_hex(&sealed_index) };
    run.put(&index_ref.key, Bytes::from(sealed_index), &run.up_mask()).await?;

    let new_bytes = run.new_bytes.load(Ordering::Relaxed) + index_ref.len;
    let manifest = Manifest {
        format: FORMAT,
        tenant: agent.config.tenant.clone(),
        name: name.clone(),
        kind: job.source.kind(),
        job: job.name.clone(),
        host: crate::hostname(),
        started_at,
        finished_at: started_at + chrono::Duration::from_std(t0.elapsed()).unwrap_or_default(),
        source_bytes,
        chunk_count: entries.len() as u64,
        new_bytes,
        stored_bytes: packer.objects.iter().map(|o| o.len).sum::<u64>() + index_ref.len,
        recipients: agent.config.recipients.iter().map(|r| r.to_string()).collect(),
        chunker: agent.config.chunking,
        pack_size: packer.pack_size as u64,
        segment_size: SEGMENT_SIZE as u64,
        index: index_ref,
        objects: packer.objects.clone(),
        wal: facts.wal.clone(),
        retention: job.retention,
    };
    let mut manifest = manifest;
    let mut manifest_bytes = Bytes::from(signed::sign(Kind::Manifest, &manifest, &agent.key));
    // the manifest crosses the uplink too: count it (its own size, to a few bytes)
    manifest.new_bytes += manifest_bytes.len() as u64;
    manifest_bytes = Bytes::from(signed::sign(Kind::Manifest, &manifest, &agent.key));
    let new_bytes = manifest.new_bytes;
    if cancel.is_cancelled() {
        bail!("job {}: cancelled before the commit, nothing committed", job.name);
    }
    let lists = condemned_lists(&agent, &run.up_mask())
        .await
        .with_context(|| format!("job {}: reading the prune's condemned lists before the commit", job.name))?;
    check_condemned(&packer.objects, &lists).with_context(|| format!("job {}", job.name))?;
    run.put(&layout::manifest(&name), manifest_bytes, &run.up_mask()).await?;

    // once a manifest is out, HEAD follows even if a stop was asked meanwhile
    let update = crate::head::HeadUpdate { seen_on_providers: head_seq, snapshot: Some(&name), ..Default::default() };
    for (p, r) in agent.commit_head(&run.up_mask(), update).await? {
        if let Err(e) = r {
            let i = replicas.iter().position(|x| x.provider == p).expect("known provider");
            run.take_down(i, e.to_string());
        }
    }
    if !run.any_up() {
        bail!("job {}: every provider failed while committing: {}", job.name, run.down_reasons());
    }
    // committed: the chunk table of this snapshot is what the next run reuses;
    // the journal's packs are either in it or no longer needed
    bascule_core::config::write_atomic_with(&table, |out| write_chunk_table(out, &packer.objects, &packer.segments, &packer.blobs))?;
    match std::fs::remove_file(&journal) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(error = %e, journal = %journal.display(), "Cannot clear the pack journal"),
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
        index_bytes: manifest.index.len,
        elapsed: t0.elapsed(),
        providers,
    };
    if report.degraded() {
        agent.backlog_add(&report)?;
    }
    Ok(report)
}
