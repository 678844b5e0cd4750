//! `controller.yaml`: providers, tenants and their agents' verify keys.
use std::path::{Path, PathBuf};

use bascule_core::keys::VerifyKey;
use bascule_core::provider::ProviderConfig;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerConfig {
    /// Local state: the highest HEAD sequence seen per tenant (rollback guard).
    pub state_dir: PathBuf,
    /// The controller's signing key for drill reports (created, mode 0600,
    /// on first use; default `<state_dir>/report-signing.key`).
    pub report_key: Option<PathBuf>,
    /// The two providers the agents write to.
    pub providers: Vec<ProviderConfig>,
    #[serde(default)]
    pub restore: RestoreConfig,
    pub tenants: Vec<TenantConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub name: String,
    /// The tenant's agent verify keys (`bascule-agent keygen` prints one).
    pub verify_keys: Vec<VerifyKey>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreConfig {
    /// Objects fetched at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Path of `pg_restore` when not on PATH.
    pub pg_restore: Option<PathBuf>,
    /// Directory of the PostgreSQL server programs (`pg_ctl`, `postgres`) for
    /// point-in-time restores; default: `pg_config --bindir`.
    pub pg_bindir: Option<PathBuf>,
}

impl RestoreConfig {
    pub fn pg_bindir(&self) -> anyhow::Result<PathBuf> {
        if let Some(d) = &self.pg_bindir {
            return Ok(d.clone());
        }
        let o = std::process::Command::new("pg_config").arg("--bindir").output();
        match o {
            Ok(o) if o.status.success() => Ok(PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())),
            _ => anyhow::bail!(
                "restore.pg_bindir is not set and `pg_config --bindir` failed: set it to the PostgreSQL server's bin directory"
            ),
        }
    }
}

impl Default for RestoreConfig {
    fn default() -> Self {
        RestoreConfig { concurrency: default_concurrency(), pg_restore: None, pg_bindir: None }
    }
}

fn default_concurrency() -> usize {
    8
}

impl ControllerConfig {
    /// The report signing key; created on first use.
    pub fn report_key(&self) -> anyhow::Result<bascule_core::keys::AgentKey> {
        use anyhow::Context;
        let path = self.report_key.clone().unwrap_or_else(|| self.state_dir.join("report-signing.key"));
        if !path.exists() {
            std::fs::create_dir_all(path.parent().unwrap_or(Path::new("."))).with_context(|| path.display().to_string())?;
            let k = bascule_core::keys::AgentKey::generate();
            k.write_new(&path)?;
            tracing::info!(path = %path.display(), verify_key = %k.verify_key(), "Created the report signing key");
        }
        Ok(bascule_core::keys::AgentKey::load(&path)?)
    }

    /// The drill store.
    pub fn drill_store(&self) -> PathBuf {
        self.state_dir.join("drills.sqlite")
    }

    pub fn load(path: &Path) -> bascule_core::Result<Self> {
        let cfg: ControllerConfig = bascule_core::config::load_yaml(path)?;
        let bad = |message: String| bascule_core::Error::ConfigValue { file: path.into(), message };
        bascule_core::provider::check_pair(&cfg.providers).map_err(bad)?;
        if cfg.restore.concurrency == 0 || cfg.restore.concurrency > 256 {
            return Err(bad("restore.concurrency must be between 1 and 256".into()));
        }
        for t in &cfg.tenants {
            bascule_core::config::check_name("tenant", &t.name).map_err(bad)?;
            if t.name == "reports" {
                return Err(bad("tenant \"reports\": the name is taken by the controller's signed reports".into()));
            }
            if t.verify_keys.is_empty() {
                return Err(bad(format!("tenant {}: verify_keys is empty", t.name)));
            }
        }
        Ok(cfg)
    }
}
