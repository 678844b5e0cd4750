//! bascule-agent: runs next to the customer's database, exports it, seals it
//! to the customer's public key and sends it to two providers.
#![forbid(unsafe_code)]

pub mod check;
pub mod chunk_id;
pub mod cli;
pub mod config;
pub mod head;
pub mod heartbeat;
pub mod metrics;
pub mod restore_test;
pub mod schedule;
pub mod snapshot;
pub mod source;
pub mod status;
pub mod wal;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use bascule_core::keys::{AgentKey, TrustedKey};
use bascule_core::provider::{Provider, Replicated, Throttle};

use config::AgentConfig;

/// Everything a run needs, built once from the config.
pub struct Agent {
    pub config: AgentConfig,
    pub config_file: PathBuf,
    pub key: Arc<AgentKey>,
    /// Both providers, every upload under the bandwidth cap (`upload.max_bandwidth`).
    pub replicated: Replicated,
    /// One HEAD writer at a time in this process (see [`head`]).
    head_lock: tokio::sync::Mutex<()>,
}

impl Agent {
    pub fn load(config_file: &Path) -> anyhow::Result<Arc<Agent>> {
        let config = AgentConfig::load(config_file)?;
        let key = AgentKey::load(&config.key_file)
            .with_context(|| format!("key_file in {}; create one with `bascule-agent keygen --out FILE`", config_file.display()))?;
        // one cap for both providers together
        let throttle = Arc::new(Throttle::new(config.upload.max_bandwidth.map(|b| b.0)));
        let mut replicas = Vec::new();
        for p in &config.providers {
            replicas.push(Provider::build(p, config_file)?.throttled(throttle.clone()).tenant(&config.tenant));
        }
        std::fs::create_dir_all(&config.state_dir).with_context(|| format!("state_dir {}", config.state_dir.display()))?;
        Ok(Arc::new(Agent {
            config_file: config_file.into(),
            key: Arc::new(key),
            replicated: Replicated::new(replicas),
            config,
            head_lock: Default::default(),
        }))
    }

    /// The keys whose signatures this agent trusts: its own, and its earlier
    /// ones within their validity.
    pub fn trusted(&self) -> Vec<TrustedKey> {
        std::iter::once(TrustedKey::from(self.key.verify_key())).chain(self.config.previous_keys.iter().cloned()).collect()
    }

    /// Whose condemned lists to honour: the controller's, when the
    /// configuration names its key; else every list that can be read.
    pub fn condemned_trust(&self) -> bascule_core::condemned::Trust<'_> {
        if self.config.controller_keys.is_empty() {
            bascule_core::condemned::Trust::Readable
        } else {
            bascule_core::condemned::Trust::Signed { keys: &self.config.controller_keys, tenant: &self.config.tenant }
        }
    }

    fn backlog_path(&self) -> PathBuf {
        self.config.state_dir.join("backlog.json")
    }

    /// Providers that miss something, with the snapshots they miss.
    pub fn backlog(&self) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
        match std::fs::read(self.backlog_path()) {
            Ok(b) => serde_json::from_slice(&b).with_context(|| format!("{} is corrupt", self.backlog_path().display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(e).context(self.backlog_path().display().to_string()),
        }
    }

    /// Records durably that a snapshot is missing on some providers.
    pub fn backlog_add(&self, report: &snapshot::SnapshotReport) -> anyhow::Result<()> {
        let mut b = self.backlog()?;
        for (p, r) in &report.providers {
            if r.is_err() {
                b.entry(p.clone()).or_default().push(report.name.clone());
            }
        }
        bascule_core::config::write_atomic(&self.backlog_path(), &serde_json::to_vec_pretty(&b)?)?;
        Ok(())
    }

    /// Copies to each provider what the other holds and it lacks (ciphertext
    /// only), then clears the backlog if every provider is complete.
    pub async fn sync(&self) -> anyhow::Result<bascule_core::sync::SyncReport> {
        let report = bascule_core::sync::sync(&self.replicated, &self.config.tenant, &self.trusted(), false).await?;
        for (p, k, n) in &report.copied {
            tracing::info!(provider = %p, key = %k, bytes = n, "Copied to provider");
        }
        for (k, why) in &report.skipped {
            tracing::warn!(key = %k, reason = %why, "Left out of the sync");
        }
        // a snapshot of the backlog that was left out is still missing where it was
        let mut report = report;
        let skipped: BTreeSet<&str> = report.skipped.iter().map(|(k, _)| k.as_str()).collect();
        let mut left = self.backlog()?;
        for names in left.values_mut() {
            names.retain(|n| skipped.contains(bascule_core::layout::manifest(n).as_str()));
        }
        left.retain(|_, names| !names.is_empty());
        for (p, names) in &left {
            report.failed.entry(p.clone()).or_insert_with(|| {
                format!("still lacks {}: left out of the sync, for it verifies nowhere with this agent's keys", names.join(", "))
            });
        }
        if report.complete() {
            if self.backlog_path().exists() {
                std::fs::remove_file(self.backlog_path())?;
            }
        } else {
            for (p, why) in &report.failed {
                tracing::error!(provider = %p, error = %why, "Provider still incomplete; the backlog is kept");
            }
        }
        Ok(report)
    }
}

/// This machine's name, as recorded in manifests and WAL records.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "unknown".into())
}
