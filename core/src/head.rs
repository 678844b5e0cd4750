//! `HEAD`: the signed pointer to a tenant's newest state on one provider, and
//! the guard that refuses a provider serving an older one.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Head {
    pub format: u32,
    pub tenant: String,
    /// Grows by one at every commit; a reader refuses a lower one than it saw.
    pub sequence: u64,
    /// Name (`<time>-<id>`) of the newest snapshot.
    pub latest_snapshot: Option<String>,
    /// Newest WAL segment, once WAL shipping runs.
    pub latest_wal: Option<String>,
    pub agent_time: chrono::DateTime<chrono::Utc>,
    /// The newest on-site restore test (its signed result is under
    /// `reports/restore-tests/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_test: Option<crate::restore::RestoreTestSummary>,
}

/// Remembers, in a small file per tenant, the highest HEAD sequence ever seen,
/// so that a provider replaying an old (validly signed) HEAD is refused.
pub struct RollbackGuard {
    path: PathBuf,
    seen: u64,
}

impl RollbackGuard {
    pub fn load(state_dir: &Path, tenant: &str) -> Result<Self> {
        let path = state_dir.join(format!("{tenant}.head-seen"));
        let seen = match std::fs::read_to_string(&path) {
            Ok(s) => s.trim().parse().map_err(|_| Error::ConfigValue {
                file: path.clone(),
                message: "not a sequence number; delete it only if you trust both providers' current HEAD".into(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(Error::io(&path, e)),
        };
        Ok(RollbackGuard { path, seen })
    }

    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// Refuses a HEAD below the highest seen; never lowers the mark.
    pub fn check(&self, provider: &str, head: &Head) -> Result<()> {
        if head.sequence < self.seen {
            return Err(Error::Rollback { provider: provider.into(), found: head.sequence, seen: self.seen });
        }
        Ok(())
    }

    /// Raises the mark (durably) after a HEAD was accepted.
    pub fn observe(&mut self, sequence: u64) -> Result<()> {
        if sequence > self.seen {
            crate::config::write_atomic(&self.path, format!("{sequence}\n").as_bytes())?;
            self.seen = sequence;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(seq: u64) -> Head {
        Head {
            format: 1,
            tenant: "t".into(),
            sequence: seq,
            latest_snapshot: None,
            latest_wal: None,
            agent_time: chrono::Utc::now(),
            restore_test: None,
        }
    }

    #[test]
    fn refuses_lower_sequence_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let mut g = RollbackGuard::load(dir.path(), "t").unwrap();
        g.check("a", &head(3)).unwrap();
        g.observe(3).unwrap();
        let g = RollbackGuard::load(dir.path(), "t").unwrap();
        assert!(g.check("a", &head(3)).is_ok());
        assert!(matches!(g.check("b", &head(2)), Err(Error::Rollback { found: 2, seen: 3, .. })));
    }
}
