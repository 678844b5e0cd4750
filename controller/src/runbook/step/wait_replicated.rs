//! `wait_replicated`: waits until both providers hold the same newest WAL
//! file (or at least the one named by `wal`), made durable no longer ago
//! than `max_lag`, as their signed HEADs say. The step's timeout bounds the
//! wait.
use std::time::Duration;

use bascule_core::wal::WalName;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::{failed, Invalid, StepContext, StepError, StepOutcome};
use crate::runbook::Runbook;
use crate::tenant::{HeadState, Tenant};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitReplicatedStep {
    pub tenant: String,
    /// Both providers' newest WAL file made durable no longer ago than this
    /// (their HEADs' time), and the same file on both.
    #[serde(with = "humantime_serde")]
    pub max_lag: Duration,
    /// And both hold this WAL file (or a later one), when it is not empty:
    /// the file a `pg_switch_wal()` completed just before the cut.
    #[serde(default)]
    pub wal: String,
}

/// How often the HEADs are read again.
const POLL: Duration = Duration::from_secs(1);

impl WaitReplicatedStep {
    pub fn validate(&self, _: &Runbook) -> Result<(), Invalid> {
        Ok(())
    }

    pub fn needs(&self, sub: &dyn Fn(&str) -> String) -> super::needs::Needs {
        super::needs::Needs { tenants: vec![sub(&self.tenant)], ..Default::default() }
    }

    pub fn describe(&self, sub: &dyn Fn(&str) -> String) -> String {
        let wal = match (self.wal.is_empty(), sub(&self.wal)) {
            (true, _) => String::new(),
            (false, v) if v.is_empty() => format!(", through the WAL file {} (set while the drill runs)", self.wal),
            (false, v) => format!(", through WAL {v}"),
        };
        let lag = humantime_serde::re::humantime::format_duration(self.max_lag);
        format!("tenant {} on both providers, lag ≤ {lag}{wal}", sub(&self.tenant))
    }

    pub async fn run(&self, ctx: &StepContext<'_>, cancel: CancellationToken) -> Result<StepOutcome, StepError> {
        let tenant = ctx.sub(&self.tenant);
        let t = ctx.controller()?.tenant(&tenant).map_err(failed)?;
        let wanted = ctx.sub(&self.wal);
        let wanted = if wanted.is_empty() {
            None
        } else {
            Some(WalName::parse(&wanted).ok_or_else(|| format!("wal {wanted:?} is not a WAL file name"))?)
        };
        let started = chrono::Utc::now();
        let mut last = String::new();
        loop {
            match check(&t, wanted.as_ref(), self.max_lag, started).await {
                Ok(summary) => return Ok(StepOutcome::text(summary)),
                Err(why) => {
                    if why != last {
                        tracing::info!(tenant = %tenant, "Waiting for replication: {why}");
                        last = why;
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = cancel.cancelled() => return Err(StepError::Cancelled),
            }
        }
    }
}

/// `Ok` with a summary when replication is complete, else why not yet.
async fn check(t: &Tenant, wanted: Option<&WalName>, max_lag: Duration, started: chrono::DateTime<chrono::Utc>) -> Result<String, String> {
    let mut newest: Vec<(String, WalName, chrono::DateTime<chrono::Utc>)> = Vec::new();
    for (provider, state) in t.heads().await {
        let h = match state {
            HeadState::Valid(h) => h,
            HeadState::Absent => return Err(format!("{provider} has no HEAD")),
            HeadState::Refused(e) => return Err(format!("{provider}: HEAD refused: {e}")),
        };
        let name = h.latest_wal.as_deref().and_then(WalName::parse).ok_or_else(|| format!("{provider} holds no WAL yet"))?;
        newest.push((provider, name, h.agent_time));
    }
    for (provider, name, at) in &newest {
        if let Some(w) = wanted {
            if name.order_key() < w.order_key() {
                return Err(format!("{provider} holds WAL up to {}, not yet {}", name.name, w.name));
            }
        }
        let lag = (started - *at).to_std().unwrap_or_default();
        if lag > max_lag {
            return Err(format!(
                "{provider}'s newest WAL {} was durable {}s before the wait began (max {}s)",
                name.name,
                lag.as_secs(),
                max_lag.as_secs()
            ));
        }
    }
    if wanted.is_none() && newest.windows(2).any(|p| p[0].1.order_key() != p[1].1.order_key()) {
        let v: Vec<String> = newest.iter().map(|(p, n, _)| format!("{p} {}", n.name)).collect();
        return Err(format!("the providers differ: {}", v.join(", ")));
    }
    let v: Vec<String> = newest.iter().map(|(p, n, at)| format!("{p} {} (durable {})", n.name, at.format("%H:%M:%S%.3f"))).collect();
    Ok(format!("both providers hold WAL through: {}", v.join(", ")))
}
