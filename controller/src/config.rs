//! `controller.yaml`: providers, tenants and their agents' verify keys.
use std::path::{Path, PathBuf};

use bascule_core::keys::TrustedKey;
use bascule_core::provider::ProviderConfig;
use bascule_core::retention::Retention;
use bascule_core::schedule::Schedule;
use serde::Deserialize;

use crate::model::Mode;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerConfig {
    /// Local state: the highest HEAD sequence seen per tenant (rollback guard).
    pub state_dir: PathBuf,
    /// The controller's signing key for drill reports and the prune's
    /// condemned lists (created, mode 0600, on first use; default
    /// `<state_dir>/report-signing.key`). `bascule-controller verify-key`
    /// prints its verify key.
    pub report_key: Option<PathBuf>,
    /// The two providers the agents write to.
    pub providers: Vec<ProviderConfig>,
    #[serde(default)]
    pub restore: RestoreConfig,
    pub tenants: Vec<TenantConfig>,
    /// What every tenant keeps unless it says otherwise (see `prune`).
    pub retention: Option<Retention>,
    #[serde(default)]
    pub prune: PruneConfig,
    /// `bascule-controller serve`: the monitor, the HTTP API, scheduled work.
    #[serde(default)]
    pub serve: ServeConfig,
    /// A warm standby `serve` keeps fed (as `bascule-controller standby`).
    pub standby: Option<StandbyConfig>,
    /// Where drills, the audit log, rollback marks and leases live: an
    /// SQLite file under `state_dir` without this; PostgreSQL with it, shared
    /// by several `serve` replicas (see the README's "Running the controller
    /// at scale").
    pub state: Option<StateConfig>,
}

/// The PostgreSQL state store.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// A connection string (`host=… dbname=… user=…` or a URI), with libpq's
    /// TLS fields (`sslmode=verify-full sslrootcert=…`); never a password.
    pub postgres: String,
    /// The role's password, `{env: NAME}` or `{file: /path}`.
    pub password: Option<bascule_core::config::SecretRef>,
    /// How long a replica holds a tenant or a drill without renewing it: a
    /// killed replica's work is taken over after this (and one cycle).
    #[serde(default = "default_lease", with = "humantime_serde")]
    pub lease: std::time::Duration,
    /// This replica's name in the leases (default: host name, process id and
    /// six random hex digits, new at each start). A name given here is
    /// refused while another live process holds it.
    pub replica: Option<String>,
}

fn default_lease() -> std::time::Duration {
    std::time::Duration::from_secs(30)
}

impl StateConfig {
    /// The connection, its password resolved.
    pub fn connect(&self, file: &Path) -> anyhow::Result<bascule_core::postgres::connect::Connect> {
        let mut c = bascule_core::postgres::connect::Connect::parse(&self.postgres)
            .map_err(|e| anyhow::anyhow!("{}: state.postgres: {e}", file.display()))?;
        if let Some(p) = &self.password {
            c.password(p.resolve(file, "state.password")?);
        }
        Ok(c)
    }

    /// This replica's name.
    pub fn replica_name(&self) -> String {
        self.replica.clone().unwrap_or_else(|| {
            // a start of its own: a container restarted in its pod (same host name, pid 1) is a new replica
            let mut nonce = [0u8; 3];
            let _ = getrandom::getrandom(&mut nonce);
            format!("{}-{}-{}", crate::os_user::hostname(), std::process::id(), hex::encode(nonce))
        })
    }
}

/// The warm standby of one tenant (the vendor's own SaaS: its identity is
/// held in the controller's memory while it runs).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandbyConfig {
    pub tenant: String,
    /// The tenant's age identity file (owner-only), read at start.
    pub identity: PathBuf,
    /// The standby's data directory: built when empty, picked up otherwise.
    pub pgdata: PathBuf,
    #[serde(default = "default_pg_port")]
    pub port: u16,
    /// A superuser of the cluster, to read where replay stands.
    #[serde(default = "default_db_user")]
    pub db_user: String,
    /// Once promoted, archive the new timeline with this (site B's agent's
    /// `wal-push`); set when the standby is built.
    pub archive_command: Option<String>,
}

fn default_pg_port() -> u16 {
    5432
}
fn default_db_user() -> String {
    "postgres".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Where the API and /metrics listen (keep it internal).
    #[serde(default = "default_listen")]
    pub listen: std::net::SocketAddr,
    /// HTTPS with this certificate chain and key (PEM); plain HTTP without.
    pub tls: Option<TlsConfig>,
    /// Plain HTTP on an address other than loopback (tokens in clear): refused
    /// unless this says so.
    #[serde(default)]
    pub allow_plaintext: bool,
    /// `/metrics` asks for a token (any role), as Prometheus's
    /// `authorization` scrape setting sends it.
    #[serde(default)]
    pub metrics_token: bool,
    /// API tokens, stored hashed (`bascule-controller token` makes one).
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// How often every tenant's HEAD is read on both providers.
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: std::time::Duration,
    /// Requests to the providers at once; scheduled prunes and verifies
    /// work on an eighth as many tenants at once.
    #[serde(default = "default_monitor_concurrency")]
    pub concurrency: usize,
    /// How often, at most, a tenant whose HEAD changed is listed on both
    /// providers to find objects present on one only.
    #[serde(default = "default_deep_interval", with = "humantime_serde")]
    pub deep_interval: std::time::Duration,
    /// Runbooks the API may start, by file name without `.yaml`.
    pub runbooks_dir: Option<PathBuf>,
    /// Scheduled drills (cron, local time).
    #[serde(default)]
    pub schedule: Vec<ScheduledDrill>,
    /// A scheduled `verify` of every tenant that reads back one slice of the
    /// objects each run (a different slice each day).
    pub verify_sample: Option<VerifySample>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifySample {
    /// Cron expression (five fields, local time), e.g. "0 4 * * *".
    pub cron: Schedule,
    /// The objects are cut in this many slices (default 100: 1 % a day, all
    /// of them every 100 days).
    #[serde(default = "default_slices")]
    pub slices: u64,
}

fn default_slices() -> u64 {
    100
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: default_listen(),
            tls: None,
            allow_plaintext: false,
            metrics_token: false,
            tokens: Vec::new(),
            interval: default_interval(),
            concurrency: default_monitor_concurrency(),
            deep_interval: default_deep_interval(),
            runbooks_dir: None,
            schedule: Vec::new(),
            verify_sample: None,
        }
    }
}

fn default_listen() -> std::net::SocketAddr {
    ([127, 0, 0, 1], 9187).into()
}
fn default_interval() -> std::time::Duration {
    std::time::Duration::from_secs(60)
}
fn default_deep_interval() -> std::time::Duration {
    std::time::Duration::from_secs(600)
}
fn default_monitor_concurrency() -> usize {
    32
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads drills, tenants.
    Viewer,
    /// And starts and approves drills.
    Operator,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds it (in the audit log).
    pub name: String,
    pub role: Role,
    /// `blake3:<hex>` of the token.
    pub hash: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduledDrill {
    /// Cron expression (five fields, local time).
    pub cron: Schedule,
    /// The runbook file.
    pub runbook: PathBuf,
    #[serde(default = "drill_mode")]
    pub mode: Mode,
    #[serde(default)]
    pub vars: std::collections::BTreeMap<String, String>,
}

fn drill_mode() -> Mode {
    Mode::Drill
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub name: String,
    /// The tenant's agent verify keys (`bascule-agent keygen` prints one),
    /// bare, or with when each is valid: `{ key: "ed25519:…", valid_from:
    /// 2026-06-01T00:00:00Z, revoked_at: 2026-11-01T00:00:00Z }`.
    /// A boxed slice, not a Vec: a list read from YAML keeps room for four,
    /// 22 MB of nothing for 35,000 tenants of one key each.
    pub verify_keys: Box<[TrustedKey]>,
    /// This tenant's retention, instead of the top-level one. The policy
    /// the tenant's agent signs into its manifests is merged in, field by
    /// field, keeping the larger.
    pub retention: Option<Retention>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PruneConfig {
    /// An unreferenced pack is condemned once older than this, and deleted
    /// this long after its condemnation (an export running meanwhile may
    /// reference it again: see the README's retention section).
    #[serde(default = "default_grace", with = "humantime_serde")]
    pub grace: std::time::Duration,
    /// Prune every tenant on this schedule in `serve` (cron, local time).
    pub cron: Option<Schedule>,
    /// How long the packs a manifest names are kept when no provider holds
    /// a copy of it that verifies and it is not signed by the tenant's key
    /// (damaged everywhere, or planted): time to look before they may go.
    #[serde(default = "default_quarantine", with = "humantime_serde")]
    pub quarantine: std::time::Duration,
    /// Deletions at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
}

impl Default for PruneConfig {
    fn default() -> Self {
        PruneConfig { grace: default_grace(), cron: None, concurrency: default_concurrency(), quarantine: default_quarantine() }
    }
}

fn default_quarantine() -> std::time::Duration {
    std::time::Duration::from_secs(7 * 24 * 3600)
}

fn default_grace() -> std::time::Duration {
    std::time::Duration::from_secs(24 * 3600)
}

impl ControllerConfig {
    /// The retention configured for `tenant` (before the agent's is merged in).
    pub fn retention_of(&self, tenant: &str) -> Option<Retention> {
        self.tenants.iter().find(|t| t.name == tenant).and_then(|t| t.retention).or(self.retention)
    }
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
        bascule_core::provider::check_pair(&cfg.providers).map_err(|e| bad(e.to_string()))?;
        if cfg.restore.concurrency == 0 || cfg.restore.concurrency > 256 {
            return Err(bad("restore.concurrency must be between 1 and 256".into()));
        }
        if cfg.serve.concurrency == 0 || cfg.serve.concurrency > 1024 {
            return Err(bad("serve.concurrency must be between 1 and 1024".into()));
        }
        if cfg.serve.tls.is_none() && !cfg.serve.listen.ip().is_loopback() && !cfg.serve.allow_plaintext {
            return Err(bad(format!(
                "serve.listen {} is not a loopback address and serve.tls is not set: API tokens would travel in clear; \
                 set serve.tls (cert, key), or serve.allow_plaintext: true behind a TLS proxy",
                cfg.serve.listen
            )));
        }
        if cfg.serve.metrics_token && cfg.serve.tokens.is_empty() {
            return Err(bad("serve.metrics_token is true but serve.tokens is empty: nothing could read /metrics".into()));
        }
        for t in &cfg.serve.tokens {
            if !t.hash.strip_prefix("blake3:").is_some_and(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit())) {
                return Err(bad(format!(
                    "serve.tokens {}: hash must be `blake3:` and 64 hex digits (bascule-controller token makes one)",
                    t.name
                )));
            }
        }
        if let Some(v) = &cfg.serve.verify_sample {
            if v.slices == 0 {
                return Err(bad("serve.verify_sample.slices must be at least 1".into()));
            }
        }
        if cfg.prune.concurrency == 0 || cfg.prune.concurrency > 256 {
            return Err(bad("prune.concurrency must be between 1 and 256".into()));
        }
        if let Some(s) = &cfg.state {
            let parsed = bascule_core::postgres::connect::Connect::parse(&s.postgres).map_err(|e| bad(format!("state.postgres: {e}")))?;
            let local = parsed.pg().get_hosts().iter().all(|h| match h {
                tokio_postgres::config::Host::Unix(_) => true,
                tokio_postgres::config::Host::Tcp(name) => {
                    name == "localhost" || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
                }
            }) && parsed.pg().get_hostaddrs().iter().all(std::net::IpAddr::is_loopback);
            use bascule_core::postgres::connect::SslMode;
            if !local && !matches!(parsed.mode(), SslMode::VerifyCa | SslMode::VerifyFull) {
                return Err(bad("state.postgres: a server beyond this machine is reached with sslmode=verify-full (and sslrootcert): \
                     whoever answers unverified could hand out leases and lower rollback marks"
                    .into()));
            }
            if parsed.pg().get_password().is_some() {
                return Err(bad("state.postgres holds a password: give it as state.password ({env: NAME} or {file: /path})".into()));
            }
            if s.lease < std::time::Duration::from_secs(2) || s.lease > std::time::Duration::from_secs(600) {
                return Err(bad("state.lease must be between 2s and 10m".into()));
            }
            if s.replica.as_ref().is_some_and(|r| r.is_empty() || r.len() > 128 || r.chars().any(char::is_control)) {
                return Err(bad("state.replica must be 1 to 128 printable characters".into()));
            }
        }
        if let Some(sb) = &cfg.standby {
            if !cfg.tenants.iter().any(|t| t.name == sb.tenant) {
                return Err(bad(format!("standby.tenant {:?} is not one of `tenants`", sb.tenant)));
            }
        }
        for t in &cfg.tenants {
            bascule_core::config::check_name("tenant", &t.name).map_err(|e| bad(e.to_string()))?;
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
