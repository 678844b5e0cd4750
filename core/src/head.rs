//! `HEAD`: the signed pointer to a tenant's newest state on one provider, and
//! the guard that refuses a provider serving an older one.
// Parses what a provider (or a source) serves: total, no panic (see the
// threat model in the README).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing))]
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::signed::{Kind, Signed};
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
    pub restore_test: Option<crate::restore_test::RestoreTestSummary>,
}

impl Signed for Head {
    const KIND: Kind = Kind::Head;
    const MAX_LEN: u64 = 64 << 10;

    fn signed_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.agent_time
    }

    fn tenant(&self) -> &str {
        &self.tenant
    }

    fn stored_at(&self) -> Option<String> {
        Some(crate::layout::HEAD.to_string())
    }
}

/// Where rollback marks are kept: one small file per tenant and provider
/// under a state folder ([`FileMarks`]), or a shared database (the
/// controller's PostgreSQL state). Both only ever raise a mark.
pub trait Marks: Send + Sync + std::fmt::Debug {
    /// The stored mark of `name` (0 when none).
    fn read(&self, name: &str) -> Result<u64>;
    /// Stores `sequence` as the mark of `name` unless the stored one is
    /// higher, atomically against every other writer.
    fn raise(&self, name: &str, sequence: u64) -> Result<()>;

    /// Raises each `(name, sequence)` as [`Marks::raise`] does; returns the
    /// marks after, in order (a store that can do it in one statement does).
    fn raise_many(&self, items: &[(&str, u64)]) -> Result<Vec<u64>> {
        items
            .iter()
            .map(|(name, seq)| {
                self.raise(name, *seq)?;
                self.read(name)
            })
            .collect()
    }
}

/// Marks in files: `<dir>/<name>.head-seen`, raised under a file lock.
#[derive(Debug, Clone)]
pub struct FileMarks {
    dir: PathBuf,
}

impl FileMarks {
    pub fn new(dir: &Path) -> FileMarks {
        FileMarks { dir: dir.to_path_buf() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.head-seen"))
    }
}

impl Marks for FileMarks {
    fn read(&self, name: &str) -> Result<u64> {
        let path = self.path(name);
        match std::fs::read_to_string(&path) {
            Ok(s) => s.trim().parse().map_err(|_| Error::ConfigValue {
                file: path.clone(),
                message: "not a sequence number; delete it only if you trust both providers' current HEAD".into(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    fn raise(&self, name: &str, sequence: u64) -> Result<()> {
        let lock_path = self.dir.join(format!(".{name}.head-seen.lock"));
        let lock =
            std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(|e| Error::io(&lock_path, e))?;
        lock.lock().map_err(|e| Error::io(&lock_path, e))?;
        // under the lock: the stored mark is re-read, and only a higher one written
        if sequence > self.read(name)? {
            crate::config::write_atomic(&self.path(name), format!("{sequence}\n").as_bytes())?;
        }
        Ok(())
    }
}

/// Remembers the highest HEAD sequence ever seen per tenant and provider
/// (in [`Marks`]), so that a provider replaying an old (validly signed)
/// HEAD is refused.
///
/// The mark only rises, whoever holds it: every check reads the stored mark,
/// and raising it writes only a higher one, atomically, so two holders (two
/// processes, or two tasks of one) can never lower what the other raised.
#[derive(Debug)]
pub struct RollbackGuard {
    marks: std::sync::Arc<dyn Marks>,
    name: String,
    /// The highest mark this holder read or wrote.
    seen: AtomicU64,
}

impl RollbackGuard {
    /// The guard of `name` (`<tenant>@<provider>`) in files under `state_dir`.
    pub fn load(state_dir: &Path, name: &str) -> Result<Self> {
        RollbackGuard::with(std::sync::Arc::new(FileMarks::new(state_dir)), name)
    }

    /// The guard of `name` with its marks kept in `marks` (read now).
    pub fn with(marks: std::sync::Arc<dyn Marks>, name: &str) -> Result<Self> {
        let g = RollbackGuard::lazy(marks, name);
        g.stored()?;
        Ok(g)
    }

    /// The same, read at the first check only (a fleet of tenants starts
    /// without one read each).
    pub fn lazy(marks: std::sync::Arc<dyn Marks>, name: &str) -> Self {
        RollbackGuard { marks, name: name.to_string(), seen: AtomicU64::new(0) }
    }

    /// Checks and raises at once, for many guards sharing one store (a
    /// monitor's cycle): each `(guard, provider, head)` is refused when below
    /// the mark, else its mark is raised to it. One call to the store for all.
    pub fn accept_many(items: &[(&RollbackGuard, &str, &Head)]) -> Result<Vec<Result<()>>> {
        let Some((first, _, _)) = items.first() else { return Ok(Vec::new()) };
        // what each holder saw goes back too: a store that lost a mark gets it again
        let asks: Vec<(&str, u64)> =
            items.iter().map(|(g, _, h)| (g.name.as_str(), h.sequence.max(g.seen.load(Ordering::SeqCst)))).collect();
        let marks = first.marks.raise_many(&asks)?;
        Ok(items
            .iter()
            .zip(marks)
            .map(|((g, provider, h), mark)| {
                g.seen.fetch_max(mark, Ordering::SeqCst);
                if h.sequence < mark {
                    Err(Error::Rollback { provider: provider.to_string(), found: h.sequence, seen: mark })
                } else {
                    Ok(())
                }
            })
            .collect())
    }

    /// The stored mark (and this holder's, if higher).
    fn stored(&self) -> Result<u64> {
        let stored = self.marks.read(&self.name)?;
        let held = self.seen.fetch_max(stored, Ordering::SeqCst);
        if stored < held {
            // the store lost what this holder had raised (restored from an old
            // copy, changed by hand): raised again, so that no other holder goes by it
            self.marks.raise(&self.name, held)?;
        }
        Ok(held.max(stored))
    }

    /// The highest sequence seen, by this holder or any other.
    pub fn seen(&self) -> Result<u64> {
        self.stored()
    }

    /// Refuses a HEAD below the highest seen; never lowers the mark.
    pub fn check(&self, provider: &str, head: &Head) -> Result<()> {
        let seen = self.stored()?;
        if head.sequence < seen {
            return Err(Error::Rollback { provider: provider.into(), found: head.sequence, seen });
        }
        Ok(())
    }

    /// Raises the mark (durably) after a HEAD was accepted; a mark another
    /// holder raised higher meanwhile stays as it is.
    pub fn observe(&self, sequence: u64) -> Result<()> {
        if sequence <= self.seen.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.marks.raise(&self.name, sequence)?;
        self.seen.fetch_max(sequence, Ordering::SeqCst);
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
        let g = RollbackGuard::load(dir.path(), "t").unwrap();
        g.check("a", &head(3)).unwrap();
        g.observe(3).unwrap();
        let g = RollbackGuard::load(dir.path(), "t").unwrap();
        assert!(g.check("a", &head(3)).is_ok());
        assert!(matches!(g.check("b", &head(2)), Err(Error::Rollback { found: 2, seen: 3, .. })));
    }

    #[test]
    fn two_holders_never_lower_each_others_mark() {
        let dir = tempfile::tempdir().unwrap();
        let a = RollbackGuard::load(dir.path(), "t@p").unwrap();
        let b = RollbackGuard::load(dir.path(), "t@p").unwrap();
        // b read the mark (0) before a raised it
        a.observe(10).unwrap();
        b.observe(4).unwrap();
        assert_eq!(RollbackGuard::load(dir.path(), "t@p").unwrap().seen().unwrap(), 10, "b's lower mark is not written over a's");
        assert!(matches!(b.check("p", &head(7)), Err(Error::Rollback { found: 7, seen: 10, .. })), "b sees what a raised");
        // many holders raising at once, from threads: the highest stays
        let guards: Vec<_> = (0..8).map(|_| std::sync::Arc::new(RollbackGuard::load(dir.path(), "t@p").unwrap())).collect();
        let threads: Vec<_> = guards
            .iter()
            .enumerate()
            .map(|(i, g)| {
                let g = g.clone();
                std::thread::spawn(move || {
                    for n in 0..50u64 {
                        g.observe(10 + n * 8 + i as u64).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(a.seen().unwrap(), 10 + 49 * 8 + 7);
    }
}

/// What each revoked key of a tenant may still have signed: HEADs up to the
/// highest sequence this controller had seen when it first ran with the
/// key revoked (`<state_dir>/<tenant>.revoked-marks`). A HEAD the key signed
/// above it is refused, whatever time it claims (a thief can backdate), and
/// raises no mark; the new key's HEADs go on as before.
#[derive(Debug, Default)]
pub struct RevokedMarks {
    marks: std::collections::BTreeMap<String, u64>,
}

impl RevokedMarks {
    /// The marks of `tenant`, recording now (as `seen()`) the mark of each
    /// revoked key met for the first time.
    pub fn load(state_dir: &Path, tenant: &str, keys: &[crate::keys::TrustedKey], seen: impl Fn() -> Result<u64>) -> Result<RevokedMarks> {
        let revoked: Vec<String> = keys.iter().filter(|k| k.revoked_at.is_some()).map(|k| k.key.to_string()).collect();
        if revoked.is_empty() {
            return Ok(RevokedMarks::default());
        }
        let path = state_dir.join(format!("{tenant}.revoked-marks"));
        let mut marks: std::collections::BTreeMap<String, u64> = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::ConfigValue { file: path.clone(), message: e.to_string() })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Default::default(),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let new: Vec<&String> = revoked.iter().filter(|k| !marks.contains_key(*k)).collect();
        if !new.is_empty() {
            let now = seen()?;
            for k in new {
                marks.insert(k.clone(), now);
            }
            let text = serde_json::to_vec_pretty(&marks).map_err(|e| Error::ConfigValue { file: path.clone(), message: e.to_string() })?;
            crate::config::write_atomic(&path, &text)?;
        }
        Ok(RevokedMarks { marks })
    }

    /// Marks kept elsewhere (the controller's shared state): key → mark.
    pub fn from_marks(marks: std::collections::BTreeMap<String, u64>) -> RevokedMarks {
        RevokedMarks { marks }
    }

    /// The marks recorded in `<state_dir>/<tenant>.revoked-marks`, if any.
    pub fn in_file(state_dir: &Path, tenant: &str) -> Result<std::collections::BTreeMap<String, u64>> {
        let path = state_dir.join(format!("{tenant}.revoked-marks"));
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::ConfigValue { file: path.clone(), message: e.to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    /// Refuses a HEAD that revoked key `by` signed above its mark.
    pub fn check(&self, provider: &str, by: &crate::keys::VerifyKey, head: &Head) -> Result<()> {
        match self.marks.get(&by.to_string()) {
            Some(mark) if head.sequence > *mark => {
                Err(Error::RevokedSigner { provider: provider.into(), key: by.to_string(), found: head.sequence, mark: *mark })
            }
            _ => Ok(()),
        }
    }
}
