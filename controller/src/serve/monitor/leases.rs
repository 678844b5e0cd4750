//! The tenant leases a replica keeps, on their own clock.
use std::sync::{Arc, RwLock};

use crate::state::fleet::{Fleet, Held, TENANT};

/// What keeps the tenant leases: their own connection to the state, where
/// to publish what they hold, the configured tenants.
pub struct Leases {
    pub fleet: Arc<Fleet>,
    pub held: Arc<RwLock<Held>>,
    pub names: Arc<String>,
    pub total: usize,
}

impl Leases {
    /// One round now (before the first cycle).
    pub fn balance(&self) -> anyhow::Result<()> {
        *self.held.write().unwrap_or_else(|e| e.into_inner()) = self.fleet.balance(TENANT, &self.names, self.total)?;
        Ok(())
    }
}

/// Keeps this replica's tenant leases, every third of the lease time and
/// whatever a monitor cycle takes: alive, renewed, given back above the fair
/// share, claimed up to it. When the state store cannot be reached, what was
/// held runs out by this process's clock, and the monitor stops watching it.
/// A tenant newly claimed wakes the monitor (`gained`), so that a killed
/// replica's tenants are read at once, not at the next interval.
pub async fn keep_leases(l: Leases, gained: Arc<tokio::sync::Notify>, cancel: tokio_util::sync::CancellationToken) {
    let Leases { fleet, held, names, total } = l;
    loop {
        let started = std::time::Instant::now();
        let (f, names) = (fleet.clone(), names.clone());
        match tokio::task::spawn_blocking(move || f.balance(TENANT, &names, total)).await {
            Ok(Ok(h)) => {
                let mut old = held.write().unwrap_or_else(|e| e.into_inner());
                let new = h.keys().any(|k| !old.contains_key(k));
                *old = h;
                if new {
                    gained.notify_one();
                }
            }
            Ok(Err(e)) => tracing::error!(error = format!("{e:#}"), "Cannot renew the leases in the state store"),
            Err(_) => return,
        }
        tokio::select! {
            // a third of the lease from the round's start, not its end: a slow
            // round does not leave what is held to run out before the next
            _ = tokio::time::sleep((fleet.lease() / 3).saturating_sub(started.elapsed())) => {}
            _ = cancel.cancelled() => return,
        }
    }
}
