//! One tenant as the controller sees it: both providers, the trusted agent
//! keys, and the rollback guard.
use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use bascule_core::head::{Head, RollbackGuard};
use bascule_core::keys::{TrustedKey, VerifyKey};
use bascule_core::manifest::Manifest;
use bascule_core::provider::{Provider, Replicated};
use bascule_core::signed::{self, Kind};
use bascule_core::wal::{WalName, WalRecord, WAL};
use bascule_core::{layout, Error};

use crate::config::ControllerConfig;

pub struct Tenant {
    pub name: String,
    pub replicated: Replicated,
    /// Every registered key (a signature must verify with one of them)…
    pub trusted: Vec<VerifyKey>,
    /// …and each key's validity (the time an object carries must fall in it).
    pub keys: Vec<TrustedKey>,
    /// One per provider: a provider that once showed sequence N and now shows
    /// less is rolling back; one that never reached N is only behind.
    pub guards: Vec<RollbackGuard>,
}

/// Checks a HEAD's envelope, that its key was valid at its agent time, and
/// that it is `tenant`'s.
pub fn open_head(tenant: &str, keys: &[TrustedKey], bytes: &[u8]) -> bascule_core::Result<Head> {
    let (h, _): (Head, _) = signed::open_valid(Kind::Head, bytes, keys, layout::HEAD, |h: &Head| h.agent_time)?;
    if h.tenant != tenant {
        return Err(Error::Body { key: layout::HEAD.into(), reason: format!("HEAD is for tenant {:?}", h.tenant) });
    }
    Ok(h)
}

/// What a provider's HEAD said.
pub enum HeadState {
    Valid(Head),
    Absent,
    Refused(Error),
}

impl Tenant {
    pub fn open(config: &ControllerConfig, config_file: &Path, name: &str) -> anyhow::Result<Tenant> {
        let t = config.tenants.iter().find(|t| t.name == name).with_context(|| {
            let names: Vec<_> = config.tenants.iter().map(|t| t.name.as_str()).collect();
            format!("no tenant {name:?} in {}; known: {}", config_file.display(), names.join(", "))
        })?;
        std::fs::create_dir_all(&config.state_dir).with_context(|| format!("state_dir {}", config.state_dir.display()))?;
        let mut replicas = Vec::new();
        let mut guards = Vec::new();
        for p in &config.providers {
            replicas.push(Provider::build(p, config_file)?.tenant(name));
            guards.push(RollbackGuard::load(&config.state_dir, &format!("{name}@{}", p.name))?);
        }
        Ok(Tenant {
            name: name.into(),
            replicated: Replicated::new(replicas),
            trusted: t.verify_keys.iter().map(|k| k.key).collect(),
            keys: t.verify_keys.clone(),
            guards,
        })
    }

    /// Reads every provider's HEAD, refuses bad signatures and rollbacks, and
    /// raises each provider's guard to the sequence it showed.
    pub async fn heads(&mut self) -> anyhow::Result<Vec<(String, HeadState)>> {
        let mut out = Vec::new();
        for (r, guard) in self.replicated.replicas.iter().zip(self.guards.iter_mut()) {
            let state = match r.get(layout::HEAD).await {
                Ok(None) => HeadState::Absent,
                Err(e) => HeadState::Refused(e),
                Ok(Some(b)) => match open_head(&self.name, &self.keys, &b) {
                    Err(e) => HeadState::Refused(e),
                    Ok(h) => match guard.check(&r.provider, &h) {
                        Ok(()) => {
                            guard.observe(h.sequence)?;
                            HeadState::Valid(h)
                        }
                        Err(e) => HeadState::Refused(e),
                    },
                },
            };
            out.push((r.provider.clone(), state));
        }
        Ok(out)
    }

    /// Fetches a manifest from whichever provider holds a copy whose signature
    /// verifies, and checks it belongs to this tenant.
    pub async fn manifest(&self, name: &str) -> bascule_core::Result<(Manifest, String)> {
        let key = layout::manifest(name);
        let ((m, _), provider) = self.replicated.get_checked(&key, 0, |_, b| self.open_manifest(name, &b).map(|m| (m, ()))).await?;
        Ok((m, provider))
    }

    /// Every object under `snapshots/` and `packs/` on each provider.
    pub async fn listings(&self) -> Vec<(String, bascule_core::Result<BTreeMap<String, u64>>)> {
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
    pub fn snapshot_names(listings: &[(String, bascule_core::Result<BTreeMap<String, u64>>)]) -> Vec<String> {
        let mut names: Vec<String> = listings
            .iter()
            .filter_map(|(_, l)| l.as_ref().ok())
            .flat_map(|l| l.keys().filter_map(|k| layout::manifest_name(k).map(str::to_string)))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The snapshot a user means: `latest` (the newest HEAD's), a full name,
    /// or the short id.
    pub async fn resolve(&mut self, wanted: &str) -> anyhow::Result<String> {
        if wanted == "latest" {
            let heads = self.heads().await?;
            let best = heads
                .iter()
                .filter_map(|(_, s)| if let HeadState::Valid(h) = s { Some(h) } else { None })
                .max_by_key(|h| h.sequence)
                .and_then(|h| h.latest_snapshot.clone());
            return best.with_context(|| format!("tenant {}: no provider has a valid HEAD naming a snapshot", self.name));
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
    pub async fn wal_listings(&self) -> Vec<(String, bascule_core::Result<BTreeMap<String, u64>>)> {
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
        let key = name.record_key();
        let (r, _): (WalRecord, _) = signed::open_valid(Kind::Wal, bytes, &self.keys, &key, |r: &WalRecord| r.archived_at)?;
        r.check_for(&self.name, name).map_err(|reason| Error::Body { key, reason })?;
        Ok(r)
    }

    /// A WAL file's record from whichever provider holds a copy that verifies.
    pub async fn wal_record(&self, name: &WalName, start: usize) -> bascule_core::Result<(WalRecord, String)> {
        self.replicated.get_checked(&name.record_key(), start, |_, b| self.open_wal_record(name, &b)).await
    }
}
