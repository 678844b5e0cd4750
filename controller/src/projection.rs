//! The projected recovery time of a tenant: the throughput its last restore
//! measured (kept in `state_dir/<tenant>.restore-rate.json`), applied to what
//! a restore would read now — the newest base backup and the WAL since, or
//! the newest export.
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What the last restore of a tenant read, and how long it took.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RestoreRate {
    pub bytes: u64,
    pub seconds: f64,
    pub at: chrono::DateTime<chrono::Utc>,
}

impl RestoreRate {
    pub fn bytes_per_second(&self) -> f64 {
        self.bytes as f64 / self.seconds.max(0.001)
    }

    /// The time a restore of `bytes` would take at this rate.
    pub fn project(&self, bytes: u64) -> Duration {
        Duration::from_secs_f64(bytes as f64 / self.bytes_per_second().max(1.0))
    }
}

fn file(state_dir: &Path, tenant: &str) -> PathBuf {
    state_dir.join(format!("{tenant}.restore-rate.json"))
}

/// Keeps what a restore just measured (a failure to keep it is logged, not fatal).
pub fn record(state_dir: &Path, tenant: &str, bytes: u64, took: Duration) {
    if bytes == 0 || took.is_zero() {
        return;
    }
    let r = RestoreRate { bytes, seconds: took.as_secs_f64(), at: chrono::Utc::now() };
    let json = serde_json::to_vec(&r).unwrap_or_default();
    if let Err(e) = bascule_core::config::write_atomic(&file(state_dir, tenant), &json) {
        tracing::warn!(tenant, error = %e, "Cannot keep the restore's throughput");
    }
}

/// The last restore's throughput, if one was measured.
pub fn load(state_dir: &Path, tenant: &str) -> Option<RestoreRate> {
    let text = std::fs::read(file(state_dir, tenant)).ok()?;
    serde_json::from_slice::<RestoreRate>(&text).ok().filter(|r| r.seconds > 0.0 && r.bytes > 0)
}

/// The newest projection of a tenant's recovery time, as the monitor (or
/// `snapshots`) last computed it: what drill reports show.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Projected {
    pub tenant: String,
    pub seconds: f64,
    pub bytes: u64,
    pub at: chrono::DateTime<chrono::Utc>,
}

fn projected_file(state_dir: &Path, tenant: &str) -> PathBuf {
    state_dir.join(format!("{tenant}.projected-rto.json"))
}

/// Keeps a projection (`bytes` to restore) for the reports; returns its seconds.
pub fn keep(state_dir: &Path, tenant: &str, rate: &RestoreRate, bytes: u64) -> f64 {
    let p = Projected { tenant: tenant.into(), seconds: rate.project(bytes).as_secs_f64(), bytes, at: chrono::Utc::now() };
    // the monitor projects every tenant at each deep cycle: write only what changed
    if kept(state_dir, tenant).is_some_and(|k| k.bytes == bytes && k.seconds == p.seconds) {
        return p.seconds;
    }
    if let Err(e) = bascule_core::config::write_atomic(&projected_file(state_dir, tenant), &serde_json::to_vec(&p).unwrap_or_default()) {
        tracing::warn!(tenant, error = %e, "Cannot keep the projected recovery time");
    }
    p.seconds
}

/// The newest projection kept for `tenant`.
pub fn kept(state_dir: &Path, tenant: &str) -> Option<Projected> {
    serde_json::from_slice(&std::fs::read(projected_file(state_dir, tenant)).ok()?).ok()
}

/// What a restore would read now: the newest base backup and the WAL
/// objects stored since it started, else the newest export (sizes as stored).
pub fn bytes_to_restore(
    newest_base: Option<(u64, chrono::DateTime<chrono::Utc>)>,
    newest_export: Option<u64>,
    wal: impl Iterator<Item = (u64, chrono::DateTime<chrono::Utc>)>,
) -> Option<u64> {
    match newest_base {
        Some((bytes, started)) => Some(bytes + wal.filter(|(_, at)| *at >= started).map(|(s, _)| s).sum::<u64>()),
        None => newest_export,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_projects_and_survives_a_restart() {
        let d = tempfile::tempdir().unwrap();
        assert!(load(d.path(), "t").is_none());
        record(d.path(), "t", 100 << 20, Duration::from_secs(2));
        let r = load(d.path(), "t").unwrap();
        assert_eq!(r.project(500 << 20), Duration::from_secs(10));
        assert_eq!(keep(d.path(), "t", &r, 500 << 20), 10.0);
        assert_eq!(kept(d.path(), "t").unwrap().seconds, 10.0);
        let t0 = chrono::Utc::now();
        let wal = [(10, t0 - chrono::Duration::hours(1)), (7, t0 + chrono::Duration::seconds(1))];
        assert_eq!(bytes_to_restore(Some((100, t0)), Some(5), wal.into_iter()), Some(107));
        assert_eq!(bytes_to_restore(None, Some(5), wal.into_iter()), Some(5));
    }
}
