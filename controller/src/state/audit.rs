//! The audit log: append-only (triggers refuse updates and deletes), and
//! each row carries the BLAKE3 of the previous row's hash and its own
//! content, so that `drill audit --verify` finds a row changed behind
//! SQLite's back.
use super::db::{p, Db};
use super::records::now;
use super::Store;

/// The advisory lock appends take in PostgreSQL ("bascule" and 2): replicas
/// append one at a time, so the chain never forks.
const AUDIT_LOCK: i64 = 0x6261_7363_756c_6502;

/// The hash of the row before the first.
pub(super) const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One audit row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    pub seq: i64,
    pub at: String,
    pub drill: Option<i64>,
    pub actor: String,
    pub event: String,
    pub detail: String,
}

fn row_hash(prev: &str, r: &AuditRow) -> String {
    let mut h = blake3::Hasher::new();
    for part in [prev, &r.seq.to_string(), &r.at, &r.drill.map(|d| d.to_string()).unwrap_or_default(), &r.actor, &r.event, &r.detail] {
        // length-prefixed, so that no two rows hash alike by moving a boundary
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().to_hex().to_string()
}

/// Appends rows chained to the newest, inside the caller's transaction
/// (which holds the audit lock); returns the sequence of the last.
fn append(db: &impl Db, drill: Option<i64>, rows: &[(&str, &str, &str)]) -> anyhow::Result<i64> {
    let last = db.query_opt("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", p![])?;
    let (mut seq, mut prev) = match last {
        Some(r) => (r.int(0)?, r.text(1)?),
        None => (0, GENESIS.to_string()),
    };
    let at = now();
    for (actor, event, detail) in rows {
        seq += 1;
        let row = AuditRow { seq, at: at.clone(), drill, actor: actor.to_string(), event: event.to_string(), detail: detail.to_string() };
        let hash = row_hash(&prev, &row);
        db.execute(
            "INSERT INTO audit (seq, at, drill, actor, event, detail, prev, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            p![row.seq, row.at, row.drill, row.actor, row.event, row.detail, prev, hash.as_str()],
        )?;
        prev = hash;
    }
    Ok(seq)
}

impl Store {
    /// Appends an audit row chained to the previous one; returns its sequence.
    pub fn audit(&mut self, drill: Option<i64>, actor: &str, event: &str, detail: &str) -> anyhow::Result<i64> {
        self.audit_many(drill, &[(actor, event, detail)])
    }

    /// Appends rows `(actor, event, detail)` in one transaction (one sync to
    /// disk for all); returns the sequence of the last.
    pub fn audit_many(&mut self, drill: Option<i64>, rows: &[(&str, &str, &str)]) -> anyhow::Result<i64> {
        let fence = self.fence.as_ref().filter(|f| drill == Some(f.drill));
        self.db.write_tx(Some(AUDIT_LOCK), |db| {
            if let Some(f) = fence {
                super::check_fence(db, f)?;
            }
            append(db, drill, rows)
        })
    }

    /// A write of drill `drill` and its audit row, in one transaction (under
    /// the fence, if any): both are written, or neither.
    pub(super) fn write_audited<R>(
        &self,
        drill: i64,
        row: (&str, &str, &str),
        f: impl FnOnce(&super::Backend) -> anyhow::Result<R>,
    ) -> anyhow::Result<R> {
        self.db.write_tx(Some(AUDIT_LOCK), |db| {
            if let Some(fence) = &self.fence {
                super::check_fence(db, fence)?;
            }
            let r = f(db)?;
            append(db, Some(drill), &[row])?;
            Ok(r)
        })
    }

    /// Checks the whole chain; returns the number of rows, or where it breaks.
    pub fn verify_audit(&self) -> anyhow::Result<Result<u64, String>> {
        let rows = self.db.query("SELECT seq, at, drill, actor, event, detail, prev, hash FROM audit ORDER BY seq", p![])?;
        let rows = rows.iter().map(|r| -> anyhow::Result<_> {
            Ok((
                AuditRow { seq: r.int(0)?, at: r.text(1)?, drill: r.opt_int(2)?, actor: r.text(3)?, event: r.text(4)?, detail: r.text(5)? },
                r.text(6)?,
                r.text(7)?,
            ))
        });
        let mut expected_prev = GENESIS.to_string();
        let mut n = 0u64;
        for row in rows {
            let (row, prev, hash) = row?;
            n += 1;
            if row.seq != n as i64 {
                return Ok(Err(format!("audit row {} is missing (found {} next)", n, row.seq)));
            }
            if prev != expected_prev {
                return Ok(Err(format!("audit row {}: does not follow row {}", row.seq, row.seq - 1)));
            }
            if row_hash(&prev, &row) != hash {
                return Ok(Err(format!("audit row {}: content does not match its hash (changed after it was written)", row.seq)));
            }
            expected_prev = hash;
        }
        Ok(Ok(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_audit_chain_verifies_and_refuses_tampering() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("drills.sqlite");
        let mut s = Store::open(&path).unwrap();
        for i in 0..5 {
            s.audit(Some(1), "alice@ops", "step-finished", &format!("step {i}: ok")).unwrap();
        }
        assert_eq!(s.verify_audit().unwrap(), Ok(5));
        // the triggers refuse an ordinary update or delete
        assert!(s.connection().execute("UPDATE audit SET detail = 'x' WHERE seq = 2", []).is_err());
        assert!(s.connection().execute("DELETE FROM audit WHERE seq = 5", []).is_err());
        // an attacker drops the triggers and rewrites a row: the chain says where
        s.connection().execute_batch("DROP TRIGGER audit_no_update; UPDATE audit SET detail = 'step 2: skipped' WHERE seq = 3;").unwrap();
        let broken = s.verify_audit().unwrap().unwrap_err();
        assert!(broken.contains("audit row 3"), "{broken}");
        // a fresh store on the same file sees the same
        drop(s);
        let s = Store::open(&path).unwrap();
        assert!(s.verify_audit().unwrap().is_err());
    }
}
