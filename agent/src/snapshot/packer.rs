//! Stage three of an export: new chunks gathered into segments, sealed in
//! parallel (at most one per core and `upload.concurrency` at once),
//! appended in stream order to a pack that uploads in the background once
//! full (at most two packs in flight). It also keeps what the snapshot
//! references: packs, segments and where each chunk lies ([`Distinct`]).
//! A segment takes its place in the segment table when its first chunk
//! arrives, so that every chunk's place is known at once.
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bascule_core::manifest::Segment;
use bascule_core::object::ObjectRef;
use bascule_core::{hash_hex, layout, seal};
use bytes::Bytes;
use tokio::task::JoinSet;

use super::distinct::Distinct;
use super::known::JournalSegment;
use super::session::Session;
use super::table::Loc;
use crate::chunk_id::ChunkId;

/// Plaintext of consecutive new chunks sealed together: large enough for
/// zstd to compress well and for age's per-file header (≈ 200 bytes, one
/// X25519 agreement to seal and to open) to cost little; small enough that a
/// restore needing one chunk of an old segment reads and decrypts little more.
pub const SEGMENT_SIZE: usize = 1 << 20;

/// A segment being sealed on the blocking pool: its ciphertext, the
/// ciphertext's hash, and its plaintext's buffer (emptied, for the next
/// segment to fill).
type Sealed = (Vec<u8>, String, Vec<u8>);
type Sealing = tokio::task::JoinHandle<bascule_core::Result<Sealed>>;
/// The chunks of a segment, with their offsets in its plaintext.
type Members = Vec<(ChunkId, u32)>;
type SealOutcome = Result<bascule_core::Result<Sealed>, tokio::task::JoinError>;

/// What the snapshot references so far (packs, segments, chunks), the
/// segment being filled, the segments being sealed, and the pack being filled.
pub(super) struct Packer {
    run: Arc<Session>,
    pub pack_size: usize,
    /// Segments sealed at once: sealing is CPU work, so no more than the
    /// cores (each one in flight holds its plaintext and ciphertext).
    sealers: usize,
    pub objects: Vec<ObjectRef>,
    object_pos: HashMap<String, u32>,
    /// A segment being filled or sealed holds its place with `pack: u32::MAX`.
    pub segments: Vec<Segment>,
    /// Segment hash → position in `segments`.
    segment_pos: HashMap<String, u32>,
    pub chunks: Distinct,
    /// Current segment: its position in `segments`, plaintext, and its
    /// chunks with their offsets.
    filling: (u32, Vec<u8>, Members),
    /// Segments being sealed, in stream order, with their position and chunks.
    sealing: VecDeque<(u32, Members, Sealing)>,
    /// Buffers of sealed segments, for the next ones to fill.
    spare: Vec<Vec<u8>>,
    /// Current pack: its slot in `objects`, bytes, and segments.
    pack: Option<(u32, Vec<u8>, Vec<JournalSegment>)>,
    uploads: JoinSet<anyhow::Result<()>>,
}

impl Packer {
    /// `chunks`: where this snapshot's chunks are recorded.
    pub fn new(run: Arc<Session>, chunks: Distinct) -> Packer {
        Packer {
            pack_size: run.agent.config.upload.pack_size.0 as usize,
            sealers: super::cores().min(run.agent.config.upload.concurrency),
            run,
            objects: Vec::new(),
            object_pos: HashMap::new(),
            segments: Vec::new(),
            segment_pos: HashMap::new(),
            chunks,
            filling: (u32::MAX, Vec::new(), Vec::new()),
            spare: Vec::new(),
            sealing: Default::default(),
            pack: None,
            uploads: JoinSet::new(),
        }
    }

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

    /// Where a chunk already stored lies in this snapshot: `k`, its place in
    /// [`Session::known`].
    pub fn known(&mut self, id: ChunkId, k: Loc) -> anyhow::Result<Loc> {
        let run = self.run.clone();
        let ks = &run.known.segments[k.segment as usize];
        let segment = match self.segment_pos.get(&ks.hash) {
            Some(s) => *s,
            None => {
                let pack = self.object(&ks.pack);
                self.add_segment(Segment { pack, at: ks.at, len: ks.len, hash: ks.hash.clone() })
            }
        };
        let loc = Loc { segment, offset: k.offset };
        self.chunks.insert(id, loc)?;
        Ok(loc)
    }

    /// Adds a new chunk to the current segment; seals the segment once full.
    pub async fn add_new(&mut self, id: ChunkId, data: &[u8]) -> anyhow::Result<Loc> {
        if let Some(loc) = self.chunks.get(&id)? {
            return Ok(loc); // twice in one stream
        }
        if self.filling.2.is_empty() {
            // sized once: a segment ends one chunk past SEGMENT_SIZE at most
            // (a Vec that doubled would take 2 MiB)
            if self.filling.1.capacity() == 0 {
                self.filling.1 = self.spare.pop().unwrap_or_default();
            }
            self.filling.1.reserve_exact(SEGMENT_SIZE + self.run.agent.config.chunking.max_size as usize);
            // its place, filled in once sealed
            self.filling.0 = self.segments.len() as u32;
            self.segments.push(Segment { pack: u32::MAX, at: 0, len: 0, hash: String::new() });
        }
        let loc = Loc { segment: self.filling.0, offset: self.filling.1.len() as u32 };
        self.chunks.insert(id, loc)?;
        self.filling.1.extend_from_slice(data);
        self.filling.2.push((id, loc.offset));
        if self.filling.1.len() >= SEGMENT_SIZE {
            self.seal_segment().await?;
        }
        Ok(loc)
    }

    /// Starts sealing the current segment; keeps at most `sealers`
    /// segments in the sealer, placing finished ones in stream order (the
    /// export loop also places each one as soon as it is sealed).
    async fn seal_segment(&mut self) -> anyhow::Result<()> {
        let (slot, data, members) = std::mem::replace(&mut self.filling, (u32::MAX, Vec::new(), Vec::new()));
        if !members.is_empty() {
            let recipients = self.run.agent.config.recipients.clone();
            let sealing = tokio::task::spawn_blocking(move || {
                seal::seal(&data, &recipients).map(|c| {
                    let h = hash_hex(&c);
                    let mut emptied = data;
                    emptied.clear();
                    (c, h, emptied)
                })
            });
            self.sealing.push_back((slot, members, sealing));
        }
        while self.sealing.len() > self.sealers {
            self.place_sealed().await?;
        }
        Ok(())
    }

    /// Waits for the oldest segment in the sealer to be sealed, without
    /// taking it: dropping this future loses nothing. Never ends when the
    /// sealer is empty.
    pub async fn oldest_sealed(&mut self) -> SealOutcome {
        std::future::poll_fn(|cx| match self.sealing.front_mut() {
            Some((_, _, handle)) => std::future::Future::poll(std::pin::Pin::new(handle), cx),
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
    pub async fn place_oldest(&mut self, outcome: SealOutcome) -> anyhow::Result<()> {
        let (segment, chunks, _) = self.sealing.pop_front().expect("a segment in the sealer");
        let (sealed, hash, emptied) = outcome??;
        if self.spare.len() <= self.sealers {
            self.spare.push(emptied);
        }
        if self.pack.is_none() {
            let slot = self.objects.len() as u32;
            // named when full
            self.objects.push(ObjectRef { key: String::new(), len: 0, hash: String::new() });
            // sized once: a pack ends one segment past `pack_size` at most (a
            // Vec that doubled would hold up to twice that, three packs being
            // in memory at once)
            let most = self.pack_size + SEGMENT_SIZE + SEGMENT_SIZE / 8;
            self.pack = Some((slot, Vec::with_capacity(most), Vec::new()));
        }
        let (slot, at) = self.pack.as_ref().map(|(slot, bytes, _)| (*slot, bytes.len() as u64)).expect("a pack");
        let len = sealed.len() as u32;
        self.segments[segment as usize] = Segment { pack: slot, at, len, hash: hash.clone() };
        self.segment_pos.insert(hash.clone(), segment);
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
    pub async fn finish(&mut self) -> anyhow::Result<()> {
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
}
