//! One tenant as the controller sees it: both providers, the trusted agent
//! keys, and the rollback guards (shared through [`crate::context`]). Every
//! HEAD the controller reads is opened and checked here, once.
use std::collections::BTreeMap;
use std::sync::Arc;

use bascule_core::head::{Head, RevokedMarks, RollbackGuard};
use bascule_core::keys::TrustedKey;
use bascule_core::manifest::Manifest;
use bascule_core::provider::{Fetched, Replicated};
use bascule_core::signed::Signed;
use bascule_core::wal::{WalName, WalRecord, WAL};
use bascule_core::{layout, Error};

pub struct Tenant {
    pub name: String,
    pub replicated: Replicated,
    /// The registered agent keys, with when each is valid.
    pub keys: Vec<TrustedKey>,
    /// One per provider: a provider that once showed sequence N and now shows
    /// less is rolling back; one that never reached N is only behind.
    pub guards: Vec<Arc<RollbackGuard>>,
    /// What each revoked key may still have signed.
    pub revoked: RevokedMarks,
}

/// What a provider's HEAD said.
pub enum HeadState {
    Valid(Head),
    Absent,
    Refused(Error),
}

/// A HEAD read again only if it changed (the monitor's conditional read).
pub enum HeadRead {
    NotModified,
    Read {
        state: HeadState,
        etag: Option<String>,
    },
    /// The provider did not answer.
    Unreachable(Error),
}

/// A HEAD fetched and opened, its guard not yet checked.
pub enum HeadFetch {
    NotModified,
    Absent,
    Opened(Head, Option<String>),
    Refused(Error),
    Unreachable(Error),
}

/// Listings of each provider: (provider, objects and sizes, or why not).
pub type Listings = Vec<(String, bascule_core::Result<BTreeMap<String, u64>>)>;

impl Tenant {
    /// Checks a HEAD's envelope, that its key was valid at its agent time, and
    /// that it is this tenant's.
    pub fn open_head(&self, bytes: &[u8]) -> bascule_core::Result<Head> {
        Head::open(bytes, &self.keys, &self.name, layout::HEAD)
    }

    /// Checks a HEAD provider `i` served: its envelope and signer (as
    /// [`Tenant::open_head`]) and what a revoked signer may still sign; not
    /// yet its rollback guard.
    fn open_from(&self, i: usize, bytes: &[u8]) -> bascule_core::Result<Head> {
        let (h, by) = Head::open_by(bytes, &self.keys, &self.name, layout::HEAD)?;
        self.revoked.check(&self.replicated.replicas[i].provider, &by, &h)?;
        Ok(h)
    }

    /// Provider `i`'s rollback guard, checked and raised in one call.
    fn guard(&self, i: usize, h: &Head) -> bascule_core::Result<()> {
        let provider = &self.replicated.replicas[i].provider;
        RollbackGuard::accept_many(&[(&*self.guards[i], provider.as_str(), h)])?.pop().unwrap_or(Ok(()))
    }

    /// Provider `i`'s HEAD unless it still has the entity tag `etag`, its
    /// signature and signer checked but not yet its rollback guard (the
    /// monitor checks a whole cycle's HEADs against their guards at once:
    /// [`RollbackGuard::accept_many`]).
    pub async fn fetch_head(&self, i: usize, etag: Option<&str>) -> HeadFetch {
        match self.replicated.replicas[i].get_if_changed(layout::HEAD, etag, Head::MAX_LEN).await {
            Ok(Fetched::NotModified) => HeadFetch::NotModified,
            Ok(Fetched::Absent) => HeadFetch::Absent,
            Ok(Fetched::Changed { bytes, etag }) => match self.open_from(i, &bytes) {
                Ok(h) => HeadFetch::Opened(h, etag),
                Err(e) => HeadFetch::Refused(e),
            },
            Err(e) => HeadFetch::Unreachable(e),
        }
    }

    /// Provider `i`'s HEAD unless it still has the entity tag `etag`, its
    /// rollback guard checked and raised.
    pub async fn read_head(&self, i: usize, etag: Option<&str>) -> HeadRead {
        match self.fetch_head(i, etag).await {
            HeadFetch::NotModified => HeadRead::NotModified,
            HeadFetch::Absent => HeadRead::Read { state: HeadState::Absent, etag: None },
            HeadFetch::Opened(h, etag) => match self.guard(i, &h) {
                Ok(()) => HeadRead::Read { state: HeadState::Valid(h), etag },
                Err(e) => HeadRead::Read { state: HeadState::Refused(e), etag: None },
            },
            HeadFetch::Refused(e) => HeadRead::Read { state: HeadState::Refused(e), etag: None },
            HeadFetch::Unreachable(e) => HeadRead::Unreachable(e),
        }
    }

    /// Reads every provider's HEAD, refuses bad signatures and rollbacks, and
    /// raises each provider's guard to the sequence it showed.
    pub async fn heads(&self) -> Vec<(String, HeadState)> {
        let mut out = Vec::new();
        for (i, r) in self.replicated.replicas.iter().enumerate() {
            let state = match self.read_head(i, None).await {
                HeadRead::Read { state, .. } => state,
                HeadRead::Unreachable(e) => HeadState::Refused(e),
                HeadRead::NotModified => HeadState::Absent,
            };
            out.push((r.provider.clone(), state));
        }
        out
    }

    /// Fetches a manifest from whichever provider holds a copy whose signature
    /// verifies, and checks it belongs to this tenant.
    pub async fn manifest(&self, name: &str) -> bascule_core::Result<(Manifest, String)> {
        let key = layout::manifest(name);
        self.replicated.get_checked(&key, Manifest::MAX_LEN, 0, |_, b| self.open_manifest(name, &b)).await
    }

    /// Every object under `snapshots/` and `packs/` on each provider.
    pub async fn listings(&self) -> Listings {
        let mut out = Vec::new();
        for r in &self.replicated.replicas {
            let l = async {
                let mut all = r.list(layout::SNAPSHOTS).await?;
                all.extend(r.list(layout::PACKS).await?);
                Ok(all)
            }
            .await;
            out.push((r.provider.clone(), l));
        }
        out
    }

    /// Names of all snapshots any provider lists, oldest first.
    pub fn snapshot_names(listings: &Listings) -> Vec<String> {
        let mut names: Vec<String> = listings
            .iter()
            .filter_map(|(_, l)| l.as_ref().ok())
            .flat_map(|l| l.keys().filter_map(|k| layout::manifest_name(k).map(str::to_string)))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The snapshot a user means: `latest` (the newest HEAD's, or, when its
    /// manifest verifies nowhere, the newest snapshot that verifies), a full
    /// name, or the short id.
    pub async fn resolve(&self, wanted: &str) -> anyhow::Result<String> {
        if wanted == "latest" {
            let heads = self.heads().await;
            let best = heads
                .iter()
                .filter_map(|(_, s)| if let HeadState::Valid(h) = s { Some(h) } else { None })
                .max_by_key(|h| h.sequence)
                .and_then(|h| h.latest_snapshot.clone());
            if let Some(name) = &best {
                match self.manifest(name).await {
                    Ok(_) => return Ok(name.clone()),
                    Err(e) => {
                        tracing::warn!(tenant = %self.name, snapshot = %name, error = %e, "The newest snapshot HEAD names verifies nowhere; taking the newest that does")
                    }
                }
            }
            for name in Self::snapshot_names(&self.listings().await).iter().rev() {
                if self.manifest(name).await.is_ok() {
                    return Ok(name.clone());
                }
            }
            anyhow::bail!("tenant {}: no snapshot verifies on any provider", self.name);
        }
        let names = Self::snapshot_names(&self.listings().await);
        let hits: Vec<_> = names.iter().filter(|n| *n == wanted || n.ends_with(&format!("-{wanted}"))).collect();
        match hits.as_slice() {
            [one] => Ok((*one).clone()),
            [] => anyhow::bail!("tenant {}: no snapshot {wanted:?}; `bascule-controller snapshots` lists them", self.name),
            _ => anyhow::bail!("tenant {}: {wanted:?} matches several snapshots; give the full name", self.name),
        }
    }

    /// Every object under `wal/` on each provider.
    pub async fn wal_listings(&self) -> Listings {
        let mut out = Vec::new();
        for r in &self.replicated.replicas {
            out.push((r.provider.clone(), r.list(WAL).await));
        }
        out
    }

    /// Checks a manifest's envelope, that its key was valid when the
    /// snapshot started, and that it is snapshot `name` of this tenant.
    pub fn open_manifest(&self, name: &str, bytes: &[u8]) -> bascule_core::Result<Manifest> {
        Manifest::open(bytes, &self.keys, &self.name, name)
    }

    /// Checks a WAL record's envelope and that it is the one `name` should hold.
    pub fn open_wal_record(&self, name: &WalName, bytes: &[u8]) -> bascule_core::Result<WalRecord> {
        WalRecord::open(bytes, &self.keys, &self.name, name)
    }

    /// A WAL file's record from whichever provider holds a copy that verifies.
    pub async fn wal_record(&self, name: &WalName, start: usize) -> bascule_core::Result<(WalRecord, String)> {
        self.replicated.get_checked(&name.record_key(), WalRecord::MAX_LEN, start, |_, b| self.open_wal_record(name, &b)).await
    }
}
