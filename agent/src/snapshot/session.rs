//! What the work in flight of one export shares: the write session over the
//! providers (a provider that fails is out for the rest of the run), what
//! each provider held when the run started, the chunks already stored, and
//! the healing of a provider that lacks a pack the other holds.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use bascule_core::object::ObjectRef;
use bascule_core::provider::Writer;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::known::{JournalEntry, JournalSegment, Known, Tables};
use super::table::Loc;
use crate::Agent;

pub(super) struct Session {
    pub agent: Arc<Agent>,
    /// Every upload of the run goes through it.
    pub writer: Writer,
    /// Packs each provider held when the run started (key → length).
    pub listings: Vec<BTreeMap<String, u64>>,
    pub known: Known,
    /// Packs copied to a provider that lacks them, once each: whether the
    /// copy read passed its check (a pack that fails is not reused; its
    /// chunks are sealed anew).
    copying: Mutex<HashMap<String, Arc<tokio::sync::OnceCell<bool>>>>,
    pub new_bytes: AtomicU64,
    pub journal: PathBuf,
    pub cancel: CancellationToken,
    /// Packs a prune condemned: never reused (see `bascule_core::retention`).
    pub condemned: HashSet<String>,
}

impl Session {
    pub fn new(
        agent: Arc<Agent>,
        writer: Writer,
        listings: Vec<BTreeMap<String, u64>>,
        known: Known,
        journal: PathBuf,
        cancel: CancellationToken,
        condemned: HashSet<String>,
    ) -> Session {
        Session { agent, writer, listings, known, copying: Mutex::default(), new_bytes: AtomicU64::new(0), journal, cancel, condemned }
    }

    /// Writes through the session unless the run is cancelled first.
    pub async fn put(&self, key: &str, bytes: Bytes, which: &[bool], create: bool) -> anyhow::Result<()> {
        tokio::select! {
            r = self.writer.put_to(key, bytes, which, create) => Ok(r?),
            _ = self.cancel.cancelled() => bail!("cancelled"),
        }
    }

    /// Which usable providers hold `pack` (with the right length).
    fn holders(&self, pack: &ObjectRef) -> Vec<bool> {
        if self.condemned.contains(&pack.key) {
            return vec![false; self.listings.len()];
        }
        self.listings.iter().zip(self.writer.up()).map(|(l, u)| u && l.get(&pack.key) == Some(&pack.len)).collect()
    }

    /// Decides one chunk stored before at `k` (in [`Session::known`]): known (`true`: on every usable provider, or on one,
    /// its pack then copied across, ciphertext only) or new (`false`: seal
    /// it). Every chunk of a pack that must be copied waits for that one
    /// copy; a pack whose copy fails its check is not reused at all.
    pub async fn place(&self, k: Loc) -> anyhow::Result<bool> {
        let Some(pack) = self.known.segments.get(k.segment as usize).map(|s| &s.pack) else { return Ok(false) };
        let has = self.holders(pack);
        let Some(from) = has.iter().position(|h| *h) else { return Ok(false) };
        let lacking: Vec<bool> = self.writer.up().iter().zip(&has).map(|(u, h)| *u && !h).collect();
        if !lacking.iter().any(|l| *l) {
            return Ok(true);
        }
        let cell = self.copying.lock().unwrap_or_else(|e| e.into_inner()).entry(pack.key.clone()).or_default().clone();
        Ok(*cell.get_or_init(|| self.copy_pack(pack, from, &lacking)).await)
    }

    /// Copies `pack` from provider `from` to those `lacking` it; whether the
    /// copy read passed its check.
    async fn copy_pack(&self, pack: &ObjectRef, from: usize, lacking: &[bool]) -> bool {
        let from = &self.agent.replicated.replicas[from];
        let copy = match from.get_ref(pack).await {
            Ok(Some(bytes)) => pack.check(&from.provider, &bytes).map(|()| bytes).map_err(anyhow::Error::from),
            Ok(None) => Err(anyhow::anyhow!("{} vanished from {}", pack.key, from.provider)),
            Err(e) => Err(e.into()),
        };
        match copy {
            Ok(bytes) => {
                // a provider that does not take it is out of the run; the pack stays known
                let _ = self.put(&pack.key, bytes, lacking, true).await;
                true
            }
            Err(e) => {
                tracing::warn!(pack = %pack.key, error = format!("{e:#}"), "A pack to copy failed its check; its chunks are sealed anew");
                false
            }
        }
    }

    /// Uploads a full pack (created where absent) and records it in the journal.
    pub async fn upload_pack(self: Arc<Self>, pack: ObjectRef, bytes: Bytes, segments: Vec<JournalSegment>) -> anyhow::Result<()> {
        self.put(&pack.key, bytes, &self.writer.up(), true).await.with_context(|| "every provider failed".to_string())?;
        self.new_bytes.fetch_add(pack.len, Ordering::Relaxed);
        let journal = self.journal.clone();
        let entry = JournalEntry { pack, segments };
        tokio::task::spawn_blocking(move || Tables::journal_append(&journal, &entry)).await??;
        Ok(())
    }
}
