//! The drill store: one SQLite file with every drill, every attempt of every
//! step, and an append-only, hash-chained audit log ([`audit`]).
//!
//! State is written after every step, so a controller killed in the middle
//! of a drill leaves a drill that `drill resume` continues or `drill abort`
//! rolls back. The audit log refuses updates and deletes (triggers), and each
//! row carries the BLAKE3 of the previous row's hash and its own content, so
//! `drill audit --verify` finds a row changed behind SQLite's back.
mod audit;
mod records;

use std::path::Path;

use anyhow::Context;
use rusqlite::{params, Connection, OptionalExtension};

pub use audit::AuditRow;
use records::{now, parse_time, word, DRILL_COLUMNS};
pub use records::{DrillRow, NewDrill, StepRecord};

use crate::model::{DrillStatus, Measures};

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

pub struct Store {
    conn: Connection,
}

impl Store {
    pub fn open(path: &Path) -> anyhow::Result<Store> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).with_context(|| d.display().to_string())?;
        }
        let conn = Connection::open(path).with_context(|| format!("cannot open the drill store {}", path.display()))?;
        // serve's API, its refusal batches and each running drill write through
        // connections of their own: on a loaded disk, wait for the lock rather than fail
        conn.busy_timeout(std::time::Duration::from_secs(60))?;
        conn.execute_batch(SCHEMA).context("preparing the drill store")?;
        Ok(Store { conn })
    }

    /// The store's file (its folder is the controller's state_dir).
    pub fn path(&self) -> Option<&Path> {
        self.conn.path().map(Path::new)
    }

    /// A new drill; returns its id.
    pub fn create_drill(&mut self, d: &NewDrill) -> anyhow::Result<i64> {
        self.conn.execute(
            "INSERT INTO drills (runbook, runbook_file, runbook_hash, mode, started_by, host, started_at, status, rto_target_ms, rpo_target_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'running', ?8, ?9)",
            params![
                d.runbook,
                d.runbook_file.display().to_string(),
                d.runbook_hash,
                d.mode.as_str(),
                d.started_by,
                d.host,
                now(),
                d.rto_target.as_millis() as i64,
                d.rpo_target.map(|t| t.as_millis() as i64)
            ],
        )?;
        let id = self.conn.last_insert_rowid();
        self.audit(
            Some(id),
            d.started_by,
            "drill-started",
            &format!("runbook {} ({}, sha {}) mode {} on {}", d.runbook, d.runbook_file.display(), d.runbook_hash, d.mode, d.host),
        )?;
        Ok(id)
    }

    pub fn drill(&self, id: i64) -> anyhow::Result<DrillRow> {
        self.conn
            .query_row(&format!("SELECT {DRILL_COLUMNS} FROM drills WHERE id = ?1"), params![id], DrillRow::from_row)
            .optional()?
            .with_context(|| format!("no drill {id} in the drill store"))
    }

    /// Every drill, newest first.
    pub fn drills(&self) -> anyhow::Result<Vec<DrillRow>> {
        let mut st = self.conn.prepare(&format!("SELECT {DRILL_COLUMNS} FROM drills ORDER BY id DESC"))?;
        let rows = st.query_map([], DrillRow::from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn set_status(&mut self, drill: i64, actor: &str, status: DrillStatus) -> anyhow::Result<()> {
        self.conn.execute("UPDATE drills SET status = ?2 WHERE id = ?1", params![drill, status.as_str()])?;
        self.audit(Some(drill), actor, "drill-status", status.as_str())?;
        Ok(())
    }

    /// The drill's end: its status (`passed`, `failed`, `aborted`) and measures.
    pub fn finish_drill(&mut self, drill: i64, actor: &str, status: DrillStatus, m: &Measures) -> anyhow::Result<()> {
        let ts = |t: Option<chrono::DateTime<chrono::Utc>>| t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        self.conn.execute(
            "UPDATE drills SET finished_at = ?2, status = ?3, rto_ms = ?4, rpo_ms = ?5, cut_at = ?6, recovery_point = ?7 WHERE id = ?1",
            params![
                drill,
                now(),
                status.as_str(),
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
                r.outcome.as_str(),
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
                outcome: word(r, 6)?,
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

    /// Every answer given in a drill: (step, approved, who, when), in order.
    pub fn approvals(&self, drill: i64) -> anyhow::Result<Vec<(String, bool, String, String)>> {
        let mut stmt = self.conn.prepare("SELECT step, approved, actor, at FROM approvals WHERE drill = ?1 ORDER BY at, step")?;
        let rows = stmt.query_map(params![drill], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The audit chain's newest row: (sequence, hash).
    pub fn audit_head(&self) -> anyhow::Result<Option<(i64, String)>> {
        Ok(self.conn.query_row("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?))).optional()?)
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
