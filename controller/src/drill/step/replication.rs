//! `wait_replicated`: waits until both providers hold the same newest WAL
//! file (or at least the one named by `wal`), made durable no longer ago
//! than `max_lag`, as their signed HEADs say. The step's timeout bounds the
//! wait.
use std::time::Duration;

use bascule_core::wal::WalName;

use super::Drill;
use crate::runbook::WaitReplicatedStep;
use crate::tenant::{HeadState, Tenant};

/// How often the HEADs are read again.
const POLL: Duration = Duration::from_secs(1);

pub async fn wait(w: &WaitReplicatedStep, d: &Drill) -> Result<String, String> {
    let (cfg, file) = d.controller()?;
    let tenant = d.sub(&w.tenant);
    let mut t = Tenant::open(cfg, file, &tenant).map_err(|e| format!("{e:#}"))?;
    let wanted = d.sub(&w.wal);
    let wanted = if wanted.is_empty() {
        None
    } else {
        Some(WalName::parse(&wanted).ok_or_else(|| format!("wal {wanted:?} is not a WAL file name"))?)
    };
    let started = chrono::Utc::now();
    let mut last = String::new();
    loop {
        match check(&mut t, wanted.as_ref(), w.max_lag, started).await {
            Ok(summary) => return Ok(summary),
            Err(why) => {
                if why != last {
                    tracing::info!(tenant = %tenant, "Waiting for replication: {why}");
                    last = why;
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `Ok` with a summary when replication is complete, else why not yet.
async fn check(
    t: &mut Tenant,
    wanted: Option<&WalName>,
    max_lag: Duration,
    started: chrono::DateTime<chrono::Utc>,
) -> Result<String, String> {
    let heads = t.heads().await.map_err(|e| format!("{e:#}"))?;
    let mut newest: Vec<(String, WalName, chrono::DateTime<chrono::Utc>)> = Vec::new();
    for (provider, state) in heads {
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
