//! `agent.yaml`: parsed strictly (unknown fields refused), then resolved.
use std::path::{Path, PathBuf};
use std::str::FromStr;

use bascule_core::chunker::ChunkerParams;
use bascule_core::keys::Recipient;
use bascule_core::provider::ProviderConfig;
use serde::Deserialize;

use crate::source::SourceConfig;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The customer's name at the vendor; objects go under `<prefix>/<tenant>/`.
    pub tenant: String,
    /// Written by `bascule-agent keygen` (mode 0600).
    pub key_file: PathBuf,
    /// This agent's earlier verify keys, after a rotation of `key_file`, with
    /// when each was valid (`{ key: "ed25519:…", revoked_at: … }`): what they
    /// signed then still counts (for `sync`, restore tests, HEAD).
    #[serde(default)]
    pub previous_keys: Vec<bascule_core::keys::TrustedKey>,
    /// The controller's verify key (`bascule-controller verify-key` prints
    /// it): the prune's condemned lists it signed are honoured, any other is
    /// ignored. Without it, every list that can be read is honoured.
    #[serde(default)]
    pub controller_keys: Vec<bascule_core::keys::TrustedKey>,
    /// Local state: HEAD sequence, backlog of a provider that was down.
    pub state_dir: PathBuf,
    /// The customer's age public keys. The agent never holds the private key.
    pub recipients: Vec<Recipient>,
    /// Exactly the providers every object goes to (two, in two places).
    pub providers: Vec<ProviderConfig>,
    #[serde(default)]
    pub upload: UploadConfig,
    #[serde(default)]
    pub chunking: ChunkerParams,
    #[serde(default)]
    pub jobs: Vec<JobConfig>,
    /// Continuous archiving: `wal-push` spools what PostgreSQL archives, the
    /// daemon ships it to both providers.
    pub wal: Option<WalConfig>,
    /// Heartbeat rows in the source database, so recovery points are
    /// measured from the data.
    pub heartbeat: Option<HeartbeatConfig>,
    /// Prometheus metrics of the daemon (`bascule-agent run`) at
    /// `http://LISTEN/metrics`.
    pub metrics: Option<MetricsConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Default 127.0.0.1:9188 (loopback: let a local Prometheus or a tunnel reach it).
    #[serde(default = "default_metrics_listen")]
    pub listen: std::net::SocketAddr,
}

fn default_metrics_listen() -> std::net::SocketAddr {
    ([127, 0, 0, 1], 9188).into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalConfig {
    /// Where `wal-push` puts files until both providers hold them
    /// (default `<state_dir>/wal-spool`). Give it room for a day of WAL.
    pub spool_dir: Option<PathBuf>,
    /// Files uploaded at once to each provider.
    #[serde(default = "default_wal_concurrency")]
    pub concurrency: usize,
    /// Full rescans of the spool, besides file-system events.
    #[serde(default = "default_rescan", with = "humantime_serde")]
    pub rescan_interval: std::time::Duration,
    /// Above this, the spool is reported loudly (a provider is likely down).
    #[serde(default = "default_spool_warn")]
    pub spool_warn_size: ByteSize,
}

fn default_wal_concurrency() -> usize {
    4
}

fn default_rescan() -> std::time::Duration {
    std::time::Duration::from_secs(10)
}

fn default_spool_warn() -> ByteSize {
    ByteSize(1 << 30)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatConfig {
    /// libpq connection string of the database to write `bascule.heartbeat` into.
    pub dsn: String,
    pub password: Option<bascule_core::config::SecretRef>,
    #[serde(default = "default_heartbeat", with = "humantime_serde")]
    pub interval: std::time::Duration,
    /// Also end the current WAL segment (`pg_switch_wal()`) this often, so
    /// that the newest heartbeat reaches the providers within this time even
    /// when the database is otherwise idle, and the replication lag the
    /// controller watches stays a real measure. Needs `GRANT EXECUTE ON
    /// FUNCTION pg_switch_wal() TO` the heartbeat's user (or a superuser).
    #[serde(default, with = "humantime_serde::option")]
    pub switch_wal_every: Option<std::time::Duration>,
}

fn default_heartbeat() -> std::time::Duration {
    std::time::Duration::from_secs(10)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadConfig {
    /// Objects in flight at once (per run, over both providers).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Upload cap for a thin uplink, e.g. `2MiB` (per second, both providers together).
    pub max_bandwidth: Option<ByteSize>,
    /// Target size of a pack: new chunks are sealed one by one and stored
    /// end to end in objects of about this size.
    #[serde(default = "default_pack_size")]
    pub pack_size: ByteSize,
}

fn default_pack_size() -> ByteSize {
    ByteSize(8 << 20)
}

impl Default for UploadConfig {
    fn default() -> Self {
        UploadConfig { concurrency: default_concurrency(), max_bandwidth: None, pack_size: default_pack_size() }
    }
}

fn default_concurrency() -> usize {
    8
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    pub name: String,
    /// Cron expression in the agent's local time: `30 1 * * *` (five fields:
    /// minute hour day month weekday, weekdays 0-7 from Sunday as in standard
    /// cron) or with seconds first (six fields).
    pub schedule: Schedule,
    pub source: SourceConfig,
    /// How many of this job's snapshots to keep (daily / weekly / monthly,
    /// and `pitr_window` for the WAL of a base backup job). Signed into every
    /// manifest: the controller's prune keeps at least this much.
    #[serde(default)]
    pub retention: Option<bascule_core::retention::Retention>,
}

pub use bascule_core::schedule::Schedule;

/// A size in bytes: `500KiB`, `2MiB`, `10MB`, or a plain number (a
/// bandwidth is a size per second, optionally written with `/s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim().trim_end_matches("/s");
        let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: f64 = num.parse().map_err(|_| format!("bad size {s:?}: expected e.g. 2MiB"))?;
        let mult = match unit.trim() {
            "" | "B" => 1.0,
            "KB" | "kB" => 1e3,
            "KiB" => 1024.0,
            "MB" => 1e6,
            "MiB" => 1024.0 * 1024.0,
            "GB" => 1e9,
            "GiB" => 1024.0 * 1024.0 * 1024.0,
            u => return Err(format!("bad size unit {u:?} in {s:?}: use B, KiB, MiB, GiB, KB, MB or GB")),
        };
        let v = (n * mult) as u64;
        if v < 1024 {
            return Err(format!("size {s:?} is below 1KiB"));
        }
        Ok(ByteSize(v))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            N(u64),
            S(String),
        }
        match Repr::deserialize(d)? {
            Repr::N(n) => Ok(ByteSize(n)),
            Repr::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl AgentConfig {
    /// Parses and validates; every error names the file (and line and field
    /// when the YAML itself is at fault).
    pub fn load(path: &Path) -> bascule_core::Result<Self> {
        let cfg: AgentConfig = bascule_core::config::load_yaml(path)?;
        let bad = |message: String| bascule_core::Error::ConfigValue { file: path.into(), message };
        if cfg.recipients.is_empty() {
            return Err(bad("recipients: at least one age recipient (age1…) is required".into()));
        }
        bascule_core::provider::check_pair(&cfg.providers).map_err(|e| bad(e.to_string()))?;
        if !(64 << 10..=256 << 20).contains(&cfg.upload.pack_size.0) {
            return Err(bad("upload.pack_size must be between 64KiB and 256MiB".into()));
        }
        if cfg.upload.concurrency == 0 || cfg.upload.concurrency > 256 {
            return Err(bad("upload.concurrency must be between 1 and 256".into()));
        }
        cfg.chunking.validate().map_err(|m| bad(format!("chunking: {m}")))?;
        bascule_core::config::check_name("tenant", &cfg.tenant).map_err(|e| bad(e.to_string()))?;
        if let Some(w) = &cfg.wal {
            if w.concurrency == 0 || w.concurrency > 64 {
                return Err(bad("wal.concurrency must be between 1 and 64".into()));
            }
        }
        let mut names = std::collections::HashSet::new();
        for j in &cfg.jobs {
            if !names.insert(&j.name) {
                return Err(bad(format!("jobs: two jobs are named {:?}", j.name)));
            }
        }
        Ok(cfg)
    }

    /// The WAL spool directory; an error when the config has no `wal` section.
    pub fn spool_dir(&self) -> anyhow::Result<PathBuf> {
        let w = self.wal.as_ref().ok_or_else(|| anyhow::anyhow!("this config has no `wal:` section; add one to archive WAL"))?;
        Ok(w.spool_dir.clone().unwrap_or_else(|| self.state_dir.join("wal-spool")))
    }

    pub fn job(&self, name: &str) -> anyhow::Result<&JobConfig> {
        self.jobs.iter().find(|j| j.name == name).ok_or_else(|| {
            let names: Vec<_> = self.jobs.iter().map(|j| j.name.as_str()).collect();
            anyhow::anyhow!("no job named {name:?}; this config has: {}", names.join(", "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bandwidth_units() {
        assert_eq!("2MiB".parse::<ByteSize>().unwrap().0, 2 * 1024 * 1024);
        assert_eq!("500KiB/s".parse::<ByteSize>().unwrap().0, 500 * 1024);
        assert!("2 parsecs".parse::<ByteSize>().is_err());
        assert!("10".parse::<ByteSize>().is_err());
    }
}
