//! The drill store: one SQLite file with every drill, every attempt of every
//! step, and an append-only, hash-chained audit log.
//!
//! State is written after every step, so a controller killed in the middle
//! of a drill leaves a drill that `drill resume` continues or `drill abort`
//! rolls back. The audit log refuses updates and deletes (triggers), and each
//! row carries the BLAKE3 of the previous row's hash and its own content, so
//! `drill audit --verify` finds a row changed behind SQLite's back.
use std::path::Path;

use anyhow::Context;
use rusqlite::{params, Connection, OptionalExtension};

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = FULL;
CREATE TABLE IF NOT EXISTS drills (
    id INTEGER PRIMARY KEY,
    runbook TEXT NOT NULL, runbook_file TEXT NOT NULL, runbook_hash TEXT NOT NULL,
    mode TEXT NOT NULL, started_by TEXT NOT NULL, host TEXT NOT NULL,
    started_at TEXT NOT NULL, finished_at TEXT, status TEXT NOT NULL,
    rto_ms INTEGER, rpo_ms INTEGER
);
CREATE TABLE IF NOT EXISTS attempts (
    drill INTEGER NOT NULL REFERENCES drills(id), step TEXT NOT NULL, attempt INTEGER NOT NULL,
    started_at TEXT NOT NULL, finished_at TEXT, outcome TEXT NOT NULL, output TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (drill, step, attempt)
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY, at TEXT NOT NULL, drill INTEGER, actor TEXT NOT NULL,
    event TEXT NOT NULL, detail TEXT NOT NULL, prev TEXT NOT NULL, hash TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
";

/// The hash of the row before the first.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

pub struct Store {
    conn: Connection,
}

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

impl Store {
    pub fn open(path: &Path) -> anyhow::Result<Store> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).with_context(|| d.display().to_string())?;
        }
        let conn = Connection::open(path).with_context(|| format!("cannot open the drill store {}", path.display()))?;
        conn.execute_batch(SCHEMA).context("preparing the drill store")?;
        Ok(Store { conn })
    }

    /// Appends an audit row chained to the previous one; returns its sequence.
    pub fn audit(&mut self, drill: Option<i64>, actor: &str, event: &str, detail: &str) -> anyhow::Result<i64> {
        let tx = self.conn.transaction()?;
        let last: Option<(i64, String)> =
            tx.query_row("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
        let (seq, prev) = last.map(|(s, h)| (s + 1, h)).unwrap_or((1, GENESIS.to_string()));
        let row = AuditRow {
            seq,
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            drill,
            actor: actor.into(),
            event: event.into(),
            detail: detail.into(),
        };
        let hash = row_hash(&prev, &row);
        tx.execute(
            "INSERT INTO audit (seq, at, drill, actor, event, detail, prev, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![row.seq, row.at, row.drill, row.actor, row.event, row.detail, prev, hash],
        )?;
        tx.commit()?;
        Ok(seq)
    }

    /// Checks the whole chain; returns the number of rows, or where it breaks.
    pub fn verify_audit(&self) -> anyhow::Result<Result<u64, String>> {
        let mut stmt = self.conn.prepare("SELECT seq, at, drill, actor, event, detail, prev, hash FROM audit ORDER BY seq")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                AuditRow { seq: r.get(0)?, at: r.get(1)?, drill: r.get(2)?, actor: r.get(3)?, event: r.get(4)?, detail: r.get(5)? },
                r.get::<_, String>(6)?,
                r.get::<_, String>(7)?,
            ))
        })?;
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

    /// A new drill; returns its id.
    pub fn create_drill(&mut self, l: &crate::runbook::Loaded, mode: &str, started_by: &str, host: &str) -> anyhow::Result<i64> {
        self.conn.execute(
            "INSERT INTO drills (runbook, runbook_file, runbook_hash, mode, started_by, host, started_at, status) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'running')",
            params![l.runbook.name, l.file.display().to_string(), l.hash, mode, started_by, host, chrono::Utc::now().to_rfc3339()],
        )?;
        let id = self.conn.last_insert_rowid();
        self.audit(
            Some(id),
            started_by,
            "drill-started",
            &format!("runbook {} ({}, sha {}) mode {mode} on {host}", l.runbook.name, l.file.display(), l.hash),
        )?;
        Ok(id)
    }

    pub fn record_attempt(
        &mut self,
        drill: i64,
        step: &str,
        attempt: u32,
        started: chrono::DateTime<chrono::Utc>,
        ok: bool,
        output: &str,
    ) -> anyhow::Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO attempts (drill, step, attempt, started_at, finished_at, outcome, output) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![drill, step, attempt, started.to_rfc3339(), chrono::Utc::now().to_rfc3339(), if ok { "passed" } else { "failed" }, output],
        )?;
        Ok(())
    }

    pub fn finish_drill(&mut self, drill: i64, actor: &str, passed: bool, rto: Option<std::time::Duration>) -> anyhow::Result<()> {
        let status = if passed { "passed" } else { "failed" };
        self.conn.execute(
            "UPDATE drills SET finished_at = ?2, status = ?3, rto_ms = ?4 WHERE id = ?1",
            params![drill, chrono::Utc::now().to_rfc3339(), status, rto.map(|d| d.as_millis() as i64)],
        )?;
        self.audit(Some(drill), actor, "drill-finished", status)?;
        Ok(())
    }

    /// Attempts of a step, in order: (attempt, outcome).
    pub fn attempts(&self, drill: i64, step: &str) -> anyhow::Result<Vec<(u32, String)>> {
        let mut st = self.conn.prepare("SELECT attempt, outcome FROM attempts WHERE drill = ?1 AND step = ?2 ORDER BY attempt")?;
        let rows = st.query_map(params![drill, step], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Raw access, for tests that tamper with the file as an attacker would.
    pub fn connection(&self) -> &Connection {
        &self.conn
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
