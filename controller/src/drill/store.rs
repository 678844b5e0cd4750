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
    rto_target_ms INTEGER NOT NULL, rpo_target_ms INTEGER,
    rto_ms INTEGER, rpo_ms INTEGER, cut_at TEXT, recovery_point TEXT
);
CREATE TABLE IF NOT EXISTS steps (
    drill INTEGER NOT NULL REFERENCES drills(id), step TEXT NOT NULL, stage TEXT NOT NULL, kind TEXT NOT NULL,
    started_at TEXT NOT NULL, finished_at TEXT NOT NULL, attempts INTEGER NOT NULL, outcome TEXT NOT NULL,
    output TEXT NOT NULL, recovery_point TEXT, seq INTEGER NOT NULL,
    PRIMARY KEY (drill, step)
);
CREATE TABLE IF NOT EXISTS variables (
    drill INTEGER NOT NULL REFERENCES drills(id), name TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (drill, name)
);
CREATE TABLE IF NOT EXISTS approvals (
    drill INTEGER NOT NULL REFERENCES drills(id), step TEXT NOT NULL, approved INTEGER NOT NULL,
    actor TEXT NOT NULL, at TEXT NOT NULL,
    PRIMARY KEY (drill, step)
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

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn parse_time(s: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&chrono::Utc)).unwrap_or_default()
}

/// A drill as stored.
#[derive(Debug, Clone)]
pub struct DrillRow {
    pub id: i64,
    pub runbook: String,
    pub runbook_file: String,
    pub runbook_hash: String,
    pub mode: String,
    pub started_by: String,
    pub host: String,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    /// `running`, `rolling-back`, `passed`, `failed`, `aborted`.
    pub status: String,
    pub rto_target: std::time::Duration,
    pub rpo_target: Option<std::time::Duration>,
    pub measures: Measures,
}

impl DrillRow {
    fn from_row(r: &rusqlite::Row) -> rusqlite::Result<DrillRow> {
        let ms = |v: Option<i64>| v.map(|v| std::time::Duration::from_millis(v.max(0) as u64));
        Ok(DrillRow {
            id: r.get(0)?,
            runbook: r.get(1)?,
            runbook_file: r.get(2)?,
            runbook_hash: r.get(3)?,
            mode: r.get(4)?,
            started_by: r.get(5)?,
            host: r.get(6)?,
            started_at: parse_time(&r.get::<_, String>(7)?),
            finished_at: r.get::<_, Option<String>>(8)?.map(|t| parse_time(&t)),
            status: r.get(9)?,
            rto_target: ms(r.get(10)?).unwrap_or_default(),
            rpo_target: ms(r.get(11)?),
            measures: Measures {
                rto: ms(r.get(12)?),
                rpo: ms(r.get(13)?),
                cut: r.get::<_, Option<String>>(14)?.map(|t| parse_time(&t)),
                recovery_point: r.get::<_, Option<String>>(15)?.map(|t| parse_time(&t)),
            },
        })
    }

    /// Whether the drill is over.
    pub fn finished(&self) -> bool {
        self.finished_at.is_some()
    }
}

/// What a drill measured.
#[derive(Debug, Clone, Default)]
pub struct Measures {
    pub rto: Option<std::time::Duration>,
    pub rpo: Option<std::time::Duration>,
    /// The cut-over instant (start of the `rto: start` step).
    pub cut: Option<chrono::DateTime<chrono::Utc>>,
    /// The newest data found on the recovered side (heartbeat, export time, last replayed commit).
    pub recovery_point: Option<chrono::DateTime<chrono::Utc>>,
}

/// A step that ended.
#[derive(Debug, Clone)]
pub struct StepRecord {
    pub id: String,
    /// The stage's name, or `on_failure`.
    pub stage: String,
    pub kind: String,
    pub started: chrono::DateTime<chrono::Utc>,
    pub finished: chrono::DateTime<chrono::Utc>,
    pub attempts: u32,
    /// `passed`, `failed`, `failed (not critical)`, `skipped`.
    pub outcome: String,
    pub output: String,
    /// The recovery point a step found: the newest heartbeat (`verify:
    /// heartbeat`), the restored export's time, the last replayed commit.
    pub recovery_point: Option<chrono::DateTime<chrono::Utc>>,
}

impl StepRecord {
    pub fn elapsed(&self) -> std::time::Duration {
        (self.finished - self.started).to_std().unwrap_or_default()
    }
}

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
        let row = AuditRow { seq, at: now(), drill, actor: actor.into(), event: event.into(), detail: detail.into() };
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
        let t = &l.runbook.targets;
        self.conn.execute(
            "INSERT INTO drills (runbook, runbook_file, runbook_hash, mode, started_by, host, started_at, status, rto_target_ms, rpo_target_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'running', ?8, ?9)",
            params![
                l.runbook.name,
                l.file.display().to_string(),
                l.hash,
                mode,
                started_by,
                host,
                now(),
                t.rto.as_millis() as i64,
                t.rpo.map(|d| d.as_millis() as i64)
            ],
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

    pub fn drill(&self, id: i64) -> anyhow::Result<DrillRow> {
        self.conn
            .query_row(
                "SELECT id, runbook, runbook_file, runbook_hash, mode, started_by, host, started_at, finished_at, status,
                        rto_target_ms, rpo_target_ms, rto_ms, rpo_ms, cut_at, recovery_point FROM drills WHERE id = ?1",
                params![id],
                DrillRow::from_row,
            )
            .optional()?
            .with_context(|| format!("no drill {id} in the drill store"))
    }

    /// Every drill, newest first.
    pub fn drills(&self) -> anyhow::Result<Vec<DrillRow>> {
        let mut st = self.conn.prepare(
            "SELECT id, runbook, runbook_file, runbook_hash, mode, started_by, host, started_at, finished_at, status,
                    rto_target_ms, rpo_target_ms, rto_ms, rpo_ms, cut_at, recovery_point FROM drills ORDER BY id DESC",
        )?;
        let rows = st.query_map([], DrillRow::from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn set_status(&mut self, drill: i64, actor: &str, status: &str) -> anyhow::Result<()> {
        self.conn.execute("UPDATE drills SET status = ?2 WHERE id = ?1", params![drill, status])?;
        self.audit(Some(drill), actor, "drill-status", status)?;
        Ok(())
    }

    /// The drill's end: its status (`passed`, `failed`, `aborted`) and measures.
    pub fn finish_drill(&mut self, drill: i64, actor: &str, status: &str, m: &Measures) -> anyhow::Result<()> {
        let ts = |t: Option<chrono::DateTime<chrono::Utc>>| t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        self.conn.execute(
            "UPDATE drills SET finished_at = ?2, status = ?3, rto_ms = ?4, rpo_ms = ?5, cut_at = ?6, recovery_point = ?7 WHERE id = ?1",
            params![
                drill,
                now(),
                status,
                m.rto.map(|d| d.as_millis() as i64),
                m.rpo.map(|d| d.as_millis() as i64),
                ts(m.cut),
                ts(m.recovery_point)
            ],
        )?;
        let fmt = |d: Option<std::time::Duration>| d.map(|d| format!("{:.1}s", d.as_secs_f64())).unwrap_or("not measured".into());
        self.audit(Some(drill), actor, "drill-finished", &format!("{status}; RTO {}, RPO {}", fmt(m.rto), fmt(m.rpo)))?;
        Ok(())
    }

    /// A step's end, kept so that `drill resume` does not run it again.
    pub fn finish_step(&mut self, drill: i64, actor: &str, r: &StepRecord) -> anyhow::Result<()> {
        let seq: i64 = self.conn.query_row("SELECT count(*) FROM steps WHERE drill = ?1", params![drill], |r| r.get(0))?;
        self.conn.execute(
            "INSERT OR REPLACE INTO steps (drill, step, stage, kind, started_at, finished_at, attempts, outcome, output, recovery_point, seq)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                drill,
                r.id,
                r.stage,
                r.kind,
                r.started.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                r.finished.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                r.attempts,
                r.outcome,
                r.output,
                r.recovery_point.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
                seq
            ],
        )?;
        let summary: String = r.output.lines().last().unwrap_or_default().chars().take(200).collect();
        self.audit(
            Some(drill),
            actor,
            if r.stage == "on_failure" { "rollback-step" } else { "step" },
            &format!("{} {} after {} attempt(s): {summary}", r.id, r.outcome, r.attempts),
        )?;
        Ok(())
    }

    /// The steps that ended, in the order they ended.
    pub fn steps(&self, drill: i64) -> anyhow::Result<Vec<StepRecord>> {
        let mut st = self.conn.prepare(
            "SELECT step, stage, kind, started_at, finished_at, attempts, outcome, output, recovery_point FROM steps WHERE drill = ?1 ORDER BY seq",
        )?;
        let rows = st.query_map(params![drill], |r| {
            Ok(StepRecord {
                id: r.get(0)?,
                stage: r.get(1)?,
                kind: r.get(2)?,
                started: parse_time(&r.get::<_, String>(3)?),
                finished: parse_time(&r.get::<_, String>(4)?),
                attempts: r.get(5)?,
                outcome: r.get(6)?,
                output: r.get(7)?,
                recovery_point: r.get::<_, Option<String>>(8)?.map(|t| parse_time(&t)),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A variable's value for this drill (from `--var` or a step's `save_as`).
    pub fn set_variable(&mut self, drill: i64, name: &str, value: &str) -> anyhow::Result<()> {
        self.conn.execute("INSERT OR REPLACE INTO variables (drill, name, value) VALUES (?1, ?2, ?3)", params![drill, name, value])?;
        Ok(())
    }

    pub fn variables(&self, drill: i64) -> anyhow::Result<Vec<(String, String)>> {
        let mut st = self.conn.prepare("SELECT name, value FROM variables WHERE drill = ?1 ORDER BY name")?;
        let rows = st.query_map(params![drill], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records an approver's answer; the first answer stands.
    pub fn answer(&mut self, drill: i64, step: &str, approved: bool, actor: &str) -> anyhow::Result<bool> {
        let n = self.conn.execute(
            "INSERT OR IGNORE INTO approvals (drill, step, approved, actor, at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![drill, step, approved, actor, now()],
        )?;
        if n == 1 {
            self.audit(Some(drill), actor, if approved { "approved" } else { "rejected" }, step)?;
        }
        Ok(n == 1)
    }

    /// The answer to an approval step, if any: (approved, who).
    pub fn approval(&self, drill: i64, step: &str) -> anyhow::Result<Option<(bool, String)>> {
        Ok(self
            .conn
            .query_row("SELECT approved, actor FROM approvals WHERE drill = ?1 AND step = ?2", params![drill, step], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?)
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
            params![drill, step, attempt, started.to_rfc3339_opts(chrono::SecondsFormat::Millis, true), now(), if ok { "passed" } else { "failed" }, output],
        )?;
        Ok(())
    }

    /// How many attempts of a step were recorded (a resumed step counts on).
    pub fn attempt_count(&self, drill: i64, step: &str) -> anyhow::Result<u32> {
        Ok(self.conn.query_row("SELECT count(*) FROM attempts WHERE drill = ?1 AND step = ?2", params![drill, step], |r| r.get(0))?)
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
