//! Bringing every provider up to the union of what the providers hold, by
//! copying ciphertext and signed objects. Needs no customer key: every copied
//! byte is checked against a signed manifest (or is a signed object itself)
//! before it is written.
//!
//! What fails its check is skipped and said, never the end of the sync: a
//! manifest that verifies nowhere (damaged everywhere, or planted) is left
//! out; a manifest one of whose objects has no good copy is not copied to a
//! provider that lacks that object. HEAD goes to a provider only once that
//! provider holds everything it names: its snapshot (with every object), its
//! restore test, and its newest WAL file (which WAL shipping, not sync,
//! brings).
use std::collections::{BTreeMap, BTreeSet};

use crate::head::Head;
use crate::keys::TrustedKey;
use crate::layout;
use crate::manifest::Manifest;
use crate::provider::{Replica, Replicated};
use crate::signed::Signed;
use crate::wal::{WalName, WalRecord};
use crate::{Error, Result};

#[derive(Debug, Default)]
pub struct SyncReport {
    /// (provider, key, bytes) copied to that provider.
    pub copied: Vec<(String, String, u64)>,
    /// Providers that could not be listed or written, with the reason.
    pub failed: BTreeMap<String, String>,
    /// (key, why): what was left out because it fails its checks.
    pub skipped: Vec<(String, String)>,
}

impl SyncReport {
    /// Every provider answered and took what it lacked.
    pub fn complete(&self) -> bool {
        self.failed.is_empty()
    }
}

/// What the objects of one tenant look like to a sync.
struct Sync<'a> {
    rep: &'a Replicated,
    tenant: &'a str,
    trusted: &'a [TrustedKey],
    dry_run: bool,
    /// What each provider holds (None: unreachable).
    holds: Vec<Option<BTreeMap<String, u64>>>,
    report: SyncReport,
}

/// Makes every provider hold every manifest any provider holds (with all its
/// objects), and the newest HEAD where it holds what that HEAD names. With
/// `dry_run`, only reports what it would copy.
pub async fn sync(rep: &Replicated, tenant: &str, trusted: &[TrustedKey], dry_run: bool) -> Result<SyncReport> {
    let mut s = Sync { rep, tenant, trusted, dry_run, holds: Vec::new(), report: SyncReport::default() };
    for r in &rep.replicas {
        let listing = async {
            let mut all = r.list(layout::SNAPSHOTS).await?;
            all.extend(r.list(layout::PACKS).await?);
            all.extend(r.list(layout::RESTORE_TESTS).await?);
            Ok::<_, Error>(all)
        };
        match listing.await {
            Ok(l) => s.holds.push(Some(l)),
            Err(e) => {
                s.report.failed.insert(r.provider.clone(), e.to_string());
                s.holds.push(None);
            }
        }
    }
    let manifests: BTreeSet<String> =
        s.holds.iter().flatten().flat_map(|h| h.keys().filter(|k| layout::manifest_name(k).is_some()).cloned()).collect();
    for mkey in &manifests {
        s.manifest(mkey).await;
    }
    s.head().await;
    Ok(s.report)
}

impl Sync<'_> {
    fn usable(&self, i: usize) -> bool {
        self.holds[i].is_some() && !self.report.failed.contains_key(&self.rep.replicas[i].provider)
    }

    /// Copies `bytes` to provider `i` (unless a dry run); a failure marks the provider failed.
    async fn write(&mut self, i: usize, key: &str, bytes: bytes::Bytes) -> bool {
        let r = &self.rep.replicas[i];
        if !self.dry_run {
            if let Err(e) = r.put(key, bytes.clone()).await {
                self.report.failed.insert(r.provider.clone(), e.to_string());
                return false;
            }
        }
        if let Some(h) = self.holds[i].as_mut() {
            h.insert(key.to_string(), bytes.len() as u64);
        }
        self.report.copied.push((r.provider.clone(), key.to_string(), bytes.len() as u64));
        true
    }

    /// One manifest and its objects, to every provider that lacks them.
    async fn manifest(&mut self, mkey: &str) {
        let (tenant, trusted) = (self.tenant, self.trusted);
        let got = self
            .rep
            .get_checked(mkey, Manifest::MAX_LEN, 0, |_, b| <Manifest as Signed>::open(&b, trusted, tenant, mkey).map(|m| (b, m)))
            .await;
        let (bytes, manifest) = match got {
            Ok(((b, m), _)) => (b, m),
            Err(e) => {
                tracing::warn!(key = %mkey, error = %e, "Manifest verifies on no provider; left out of the sync");
                self.report.skipped.push((mkey.to_string(), e.to_string()));
                return;
            }
        };
        let n = self.rep.replicas.len();
        'providers: for i in 0..n {
            if !self.usable(i) {
                continue;
            }
            let held = self.holds[i].as_ref().map(|h| h.get(mkey).is_some()).unwrap_or(false);
            let lacking: Vec<_> =
                manifest.all_objects().filter(|o| self.holds[i].as_ref().and_then(|h| h.get(&o.key)) != Some(&o.len)).cloned().collect();
            for o in lacking {
                let good = if self.dry_run {
                    Ok(bytes::Bytes::new())
                } else {
                    // prefer another provider as the source
                    self.rep.get_ref_checked(&o, (i + 1) % n).await.map(|(b, _)| b)
                };
                match good {
                    Ok(b) if self.dry_run => self.note(i, &o.key, o.len, b),
                    Ok(b) => {
                        if !self.write(i, &o.key, b).await {
                            continue 'providers;
                        }
                    }
                    Err(e) => {
                        let why =
                            format!("{} has no good copy ({e}); the manifest is not copied to {}", o.key, self.rep.replicas[i].provider);
                        tracing::error!(key = %mkey, error = %why, "Cannot complete a snapshot on a provider");
                        self.report.skipped.push((mkey.to_string(), why));
                        continue 'providers;
                    }
                }
            }
            if !held {
                self.write(i, mkey, bytes.clone()).await;
            }
        }
    }

    /// What a dry run would copy.
    fn note(&mut self, i: usize, key: &str, len: u64, _: bytes::Bytes) {
        if let Some(h) = self.holds[i].as_mut() {
            h.insert(key.to_string(), len);
        }
        self.report.copied.push((self.rep.replicas[i].provider.clone(), key.to_string(), len));
    }

    /// Whether provider `r` holds the WAL file (and its record) `name`.
    async fn holds_wal(&self, r: &Replica, name: &str) -> bool {
        let Some(w) = WalName::parse(name) else { return false };
        match r.get(&w.record_key(), WalRecord::MAX_LEN).await {
            Ok(Some(b)) => match WalRecord::open(&b, self.trusted, self.tenant, &w) {
                Ok(rec) => r.list(&w.object_key()).await.is_ok_and(|l| l.get(&rec.object.key) == Some(&rec.object.len)),
                Err(_) => false,
            },
            _ => false,
        }
    }

    /// The highest valid HEAD, to each provider with a lower one that holds
    /// everything it names.
    async fn head(&mut self) {
        let n = self.rep.replicas.len();
        let mut heads = Vec::with_capacity(n);
        for (i, r) in self.rep.replicas.iter().enumerate() {
            let h = match (self.holds[i].is_some(), r.get(layout::HEAD, Head::MAX_LEN).await) {
                (true, Ok(Some(b))) => Head::open(&b, self.trusted, self.tenant, layout::HEAD).ok().map(|h| (h, b)),
                _ => None,
            };
            heads.push(h);
        }
        let Some((best, bytes)) = heads.iter().flatten().max_by_key(|(h, _)| h.sequence).cloned() else { return };
        for (i, held) in heads.iter().enumerate() {
            if !self.usable(i) || held.as_ref().map(|(h, _)| h.sequence) >= Some(best.sequence) {
                continue;
            }
            let r = &self.rep.replicas[i];
            let holds = |k: &str| self.holds[i].as_ref().is_some_and(|h| h.contains_key(k));
            let mut lacks = Vec::new();
            if let Some(s) = &best.latest_snapshot {
                if !holds(&layout::manifest(s)) {
                    lacks.push(format!("snapshot {s}"));
                }
            }
            if let Some(t) = &best.restore_test {
                if !holds(&t.key) {
                    lacks.push(format!("restore test {}", t.key));
                }
            }
            if let Some(w) = &best.latest_wal {
                if !self.holds_wal(r, w).await {
                    lacks.push(format!("WAL file {w}"));
                }
            }
            if lacks.is_empty() {
                self.write(i, layout::HEAD, bytes.clone()).await;
            } else {
                let why = format!("not copied to {}: it lacks {} (WAL shipping brings the WAL)", r.provider, lacks.join(", "));
                self.report.skipped.push((layout::HEAD.to_string(), why));
            }
        }
    }
}
