//! The drill store: every drill, every attempt of every step, and an
//! append-only, hash-chained audit log ([`audit`]); in an SQLite file under
//! `state_dir` (the embedded default) or in PostgreSQL (`state.postgres`),
//! where several `serve` processes share it with their leases ([`fleet`]).
//! Both backends run the same statements ([`db`]) on schemas migrated by
//! version ([`migrate`]).
//!
//! State is written after every step, so a controller killed in the middle
//! of a drill leaves a drill that `drill resume` continues or `drill abort`
//! rolls back. The audit log refuses updates and deletes (triggers), and each
//! row carries the BLAKE3 of the previous row's hash and its own content, so
//! `drill audit --verify` finds a row changed behind the database's back.
mod audit;
pub mod db;
pub mod fleet;
pub mod migrate;
mod pg;
mod records;

use std::path::{Path, PathBuf};

use anyhow::Context;

pub use audit::AuditRow;
use db::{p, Db, Dialect, Row, Sqlite, Value};
pub use pg::Pg;
use records::{now, parse_time, DRILL_COLUMNS};
pub use records::{DrillRow, NewDrill, StepRecord};

use crate::model::{DrillStatus, Measures};

/// Where the store is.
enum Backend {
    Sqlite(Sqlite),
    Postgres(Pg),
}

impl Db for Backend {
    fn dialect(&self) -> Dialect {
        match self {
            Backend::Sqlite(d) => d.dialect(),
            Backend::Postgres(d) => d.dialect(),
        }
    }
    fn execute(&self, sql: &str, params: Vec<Value>) -> anyhow::Result<u64> {
        match self {
            Backend::Sqlite(d) => d.execute(sql, params),
            Backend::Postgres(d) => d.execute(sql, params),
        }
    }
    fn query(&self, sql: &str, params: Vec<Value>) -> anyhow::Result<Vec<Row>> {
        match self {
            Backend::Sqlite(d) => d.query(sql, params),
            Backend::Postgres(d) => d.query(sql, params),
        }
    }
    fn batch(&self, sql: &str) -> anyhow::Result<()> {
        match self {
            Backend::Sqlite(d) => d.batch(sql),
            Backend::Postgres(d) => d.batch(sql),
        }
    }
}

pub struct Store {
    db: Backend,
    /// The controller's state_dir (restore rates, reports).
    state_dir: PathBuf,
    /// The drill lease this store's writes are made under, if any.
    fence: Option<Fence>,
}

/// A drill's lease as its holder saw it when it took it: a write under it
/// is refused once another replica has taken the lease (a higher epoch).
#[derive(Debug, Clone)]
pub struct Fence {
    pub drill: i64,
    pub holder: String,
    pub epoch: i64,
    /// Cancelled when a write finds the lease lost: the drill stops here.
    pub lost: Option<tokio_util::sync::CancellationToken>,
}

/// Refuses the write unless the drill's lease is still `f`'s (the row is
/// held until the write commits, so no takeover slips in between).
fn check_fence(db: &impl Db, f: &Fence) -> anyhow::Result<()> {
    let row = db.query_opt("SELECT holder, epoch FROM leases WHERE kind = 'drill' AND name = ?1 FOR SHARE", p![f.drill.to_string()])?;
    let (holder, epoch) = match row {
        Some(r) => (r.opt_text(0)?.unwrap_or_default(), r.int(1)?),
        None => (String::new(), 0),
    };
    if holder != f.holder || epoch != f.epoch {
        if let Some(t) = &f.lost {
            t.cancel();
        }
        anyhow::bail!(
            "drill {}: this process's lease (epoch {} as {}) was taken over (now epoch {epoch}, {}): its writes are refused",
            f.drill,
            f.epoch,
            f.holder,
            if holder.is_empty() { "released".to_string() } else { format!("held by {holder}") }
        );
    }
    Ok(())
}

impl Store {
    /// The SQLite store in file `path` (its folder is the state_dir).
    pub fn open(path: &Path) -> anyhow::Result<Store> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).with_context(|| d.display().to_string())?;
        }
        let conn = rusqlite::Connection::open(path).with_context(|| format!("cannot open the drill store {}", path.display()))?;
        // serve's API, its refusal batches and each running drill write through
        // connections of their own: on a loaded disk, wait for the lock rather than fail
        conn.busy_timeout(std::time::Duration::from_secs(60))?;
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;").context("preparing the drill store")?;
        let db = Backend::Sqlite(Sqlite(conn));
        migrate::migrate(&db).with_context(|| format!("the drill store {}", path.display()))?;
        Ok(Store { db, state_dir: path.parent().map(Path::to_path_buf).unwrap_or_default(), fence: None })
    }

    /// The PostgreSQL store (migrated to this binary's schema if behind).
    pub fn open_postgres(pg: Pg, state_dir: &Path) -> anyhow::Result<Store> {
        let db = Backend::Postgres(pg);
        migrate::migrate(&db).context("the PostgreSQL state store (state.postgres)")?;
        Ok(Store { db, state_dir: state_dir.to_path_buf(), fence: None })
    }

    /// Makes every drill write of this store depend on the drill's lease
    /// (PostgreSQL only).
    pub fn fence(&mut self, f: Fence) {
        if self.shared() {
            self.fence = Some(f);
        }
    }

    /// Stops the drill (cancels `t`) when a write finds its lease lost.
    pub fn stop_on_lost_lease(&mut self, t: tokio_util::sync::CancellationToken) {
        if let Some(f) = &mut self.fence {
            f.lost = Some(t);
        }
    }

    /// Fails (and stops the drill) unless this store's drill lease still
    /// holds: checked before each attempt of a step.
    pub fn check_held(&self) -> anyhow::Result<()> {
        match &self.fence {
            None => Ok(()),
            Some(f) => self.db.write_tx(None, |db| check_fence(db, f)),
        }
    }

    /// Runs a write, under the fence if there is one.
    fn write<R>(&self, f: impl FnOnce(&Backend) -> anyhow::Result<R>) -> anyhow::Result<R> {
        match &self.fence {
            None => f(&self.db),
            Some(fence) => self.db.write_tx(None, |db| {
                check_fence(db, fence)?;
                f(db)
            }),
        }
    }

    /// The controller's state_dir, for what stays in local files.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Whether the store is PostgreSQL (shared by several processes).
    pub fn shared(&self) -> bool {
        self.db.dialect() == Dialect::Postgres
    }

    /// A new drill; returns its id.
    pub fn create_drill(&mut self, d: &NewDrill) -> anyhow::Result<i64> {
        let row = self.db.query_opt(
            "INSERT INTO drills (runbook, runbook_file, runbook_hash, mode, started_by, host, started_at, status, rto_target_ms, rpo_target_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'running', ?8, ?9) RETURNING id",
            p![
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
        let id = row.context("the new drill has no id")?.int(0)?;
        self.audit(
            Some(id),
            d.started_by,
            "drill-started",
            &format!("runbook {} ({}, sha {}) mode {} on {}", d.runbook, d.runbook_file.display(), d.runbook_hash, d.mode, d.host),
        )?;
        Ok(id)
    }

    pub fn drill(&self, id: i64) -> anyhow::Result<DrillRow> {
        let row = self.db.query_opt(&format!("SELECT {DRILL_COLUMNS} FROM drills WHERE id = ?1"), p![id])?;
        DrillRow::from_row(&row.with_context(|| format!("no drill {id} in the drill store"))?)
    }

    /// Every drill, newest first.
    pub fn drills(&self) -> anyhow::Result<Vec<DrillRow>> {
        self.db.query(&format!("SELECT {DRILL_COLUMNS} FROM drills ORDER BY id DESC"), p![])?.iter().map(DrillRow::from_row).collect()
    }

    pub fn set_status(&mut self, drill: i64, actor: &str, status: DrillStatus) -> anyhow::Result<()> {
        self.write_audited(drill, (actor, "drill-status", status.as_str()), |db| {
            db.execute("UPDATE drills SET status = ?2 WHERE id = ?1", p![drill, status.as_str()])
        })?;
        Ok(())
    }

    /// The drill's end: its status (`passed`, `failed`, `aborted`) and measures.
    pub fn finish_drill(&mut self, drill: i64, actor: &str, status: DrillStatus, m: &Measures) -> anyhow::Result<()> {
        let ts = |t: Option<chrono::DateTime<chrono::Utc>>| t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        let fmt = |d: Option<std::time::Duration>| d.map(|d| format!("{:.1}s", d.as_secs_f64())).unwrap_or("not measured".into());
        let detail = format!("{status}; RTO {}, RPO {}", fmt(m.rto), fmt(m.rpo));
        self.write_audited(drill, (actor, "drill-finished", &detail), |db| {
            db.execute(
                "UPDATE drills SET finished_at = ?2, status = ?3, rto_ms = ?4, rpo_ms = ?5, cut_at = ?6, recovery_point = ?7 WHERE id = ?1",
                p![
                    drill,
                    now(),
                    status.as_str(),
                    m.rto.map(|d| d.as_millis() as i64),
                    m.rpo.map(|d| d.as_millis() as i64),
                    ts(m.cut),
                    ts(m.recovery_point)
                ],
            )
        })?;
        Ok(())
    }

    /// A step's end, kept so that `drill resume` does not run it again.
    pub fn finish_step(&mut self, drill: i64, actor: &str, r: &StepRecord) -> anyhow::Result<()> {
        let summary: String = r.output.lines().last().unwrap_or_default().chars().take(200).collect();
        let detail = format!("{} {} after {} attempt(s): {summary}", r.id, r.outcome, r.attempts);
        let event = if r.stage == "on_failure" { "rollback-step" } else { "step" };
        self.write_audited(drill, (actor, event, &detail), |db| {
            let seq = db.query_opt("SELECT count(*) FROM steps WHERE drill = ?1", p![drill])?.context("count")?.int(0)?;
            db.execute(
                "INSERT INTO steps (drill, step, stage, kind, started_at, finished_at, attempts, outcome, output, recovery_point, seq)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                 ON CONFLICT (drill, step) DO UPDATE SET stage = excluded.stage, kind = excluded.kind, started_at = excluded.started_at,
                     finished_at = excluded.finished_at, attempts = excluded.attempts, outcome = excluded.outcome,
                     output = excluded.output, recovery_point = excluded.recovery_point, seq = excluded.seq",
                p![
                    drill,
                    r.id.as_str(),
                    r.stage.as_str(),
                    r.kind.as_str(),
                    r.started.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    r.finished.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    r.attempts,
                    r.outcome.as_str(),
                    r.output.as_str(),
                    r.recovery_point.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
                    seq
                ],
            )
        })?;
        Ok(())
    }

    /// The steps that ended, in the order they ended.
    pub fn steps(&self, drill: i64) -> anyhow::Result<Vec<StepRecord>> {
        let rows = self.db.query(
            "SELECT step, stage, kind, started_at, finished_at, attempts, outcome, output, recovery_point FROM steps WHERE drill = ?1 ORDER BY seq",
            p![drill],
        )?;
        rows.iter()
            .map(|r| {
                Ok(StepRecord {
                    id: r.text(0)?,
                    stage: r.text(1)?,
                    kind: r.text(2)?,
                    started: parse_time(&r.text(3)?),
                    finished: parse_time(&r.text(4)?),
                    attempts: u32::try_from(r.int(5)?).unwrap_or(u32::MAX),
                    outcome: r.word(6)?,
                    output: r.text(7)?,
                    recovery_point: r.opt_text(8)?.map(|t| parse_time(&t)),
                })
            })
            .collect()
    }

    /// A variable's value for this drill (from `--var` or a step's `save_as`).
    pub fn set_variable(&mut self, drill: i64, name: &str, value: &str) -> anyhow::Result<()> {
        self.write(|db| {
            db.execute(
            "INSERT INTO variables (drill, name, value) VALUES (?1, ?2, ?3) ON CONFLICT (drill, name) DO UPDATE SET value = excluded.value",
            p![drill, name, value],
        )
        })?;
        Ok(())
    }

    pub fn variables(&self, drill: i64) -> anyhow::Result<Vec<(String, String)>> {
        let rows = self.db.query("SELECT name, value FROM variables WHERE drill = ?1 ORDER BY name", p![drill])?;
        rows.iter().map(|r| Ok((r.text(0)?, r.text(1)?))).collect()
    }

    /// Records an approver's answer; the first answer stands.
    pub fn answer(&mut self, drill: i64, step: &str, approved: bool, actor: &str) -> anyhow::Result<bool> {
        let n = self.db.execute(
            "INSERT INTO approvals (drill, step, approved, actor, at) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (drill, step) DO NOTHING",
            p![drill, step, approved, actor, now()],
        )?;
        if n == 1 {
            self.audit(Some(drill), actor, if approved { "approved" } else { "rejected" }, step)?;
        }
        Ok(n == 1)
    }

    /// Every answer given in a drill: (step, approved, who, when), in order.
    pub fn approvals(&self, drill: i64) -> anyhow::Result<Vec<(String, bool, String, String)>> {
        let rows = self.db.query("SELECT step, approved, actor, at FROM approvals WHERE drill = ?1 ORDER BY at, step", p![drill])?;
        rows.iter().map(|r| Ok((r.text(0)?, r.bool(1)?, r.text(2)?, r.text(3)?))).collect()
    }

    /// The audit chain's newest row: (sequence, hash).
    pub fn audit_head(&self) -> anyhow::Result<Option<(i64, String)>> {
        let row = self.db.query_opt("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", p![])?;
        row.map(|r| Ok((r.int(0)?, r.text(1)?))).transpose()
    }

    /// The answer to an approval step, if any: (approved, who).
    pub fn approval(&self, drill: i64, step: &str) -> anyhow::Result<Option<(bool, String)>> {
        let row = self.db.query_opt("SELECT approved, actor FROM approvals WHERE drill = ?1 AND step = ?2", p![drill, step])?;
        row.map(|r| Ok((r.bool(0)?, r.text(1)?))).transpose()
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
        self.write(|db| {
            db.execute(
                "INSERT INTO attempts (drill, step, attempt, started_at, finished_at, outcome, output) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (drill, step, attempt) DO UPDATE SET started_at = excluded.started_at, finished_at = excluded.finished_at,
                 outcome = excluded.outcome, output = excluded.output",
                p![
                    drill,
                    step,
                    attempt,
                    started.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    now(),
                    if ok { "passed" } else { "failed" },
                    output
                ],
            )
        })?;
        Ok(())
    }

    /// How many attempts of a step were recorded (a resumed step counts on).
    pub fn attempt_count(&self, drill: i64, step: &str) -> anyhow::Result<u32> {
        let n =
            self.db.query_opt("SELECT count(*) FROM attempts WHERE drill = ?1 AND step = ?2", p![drill, step])?.context("count")?.int(0)?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// Attempts of a step, in order: (attempt, outcome).
    pub fn attempts(&self, drill: i64, step: &str) -> anyhow::Result<Vec<(u32, String)>> {
        let rows =
            self.db.query("SELECT attempt, outcome FROM attempts WHERE drill = ?1 AND step = ?2 ORDER BY attempt", p![drill, step])?;
        rows.iter().map(|r| Ok((u32::try_from(r.int(0)?).unwrap_or(u32::MAX), r.text(1)?))).collect()
    }

    /// Raw access to an SQLite store, for tests that tamper with the file as
    /// an attacker would.
    pub fn connection(&self) -> &rusqlite::Connection {
        match &self.db {
            Backend::Sqlite(s) => &s.0,
            Backend::Postgres(_) => panic!("connection(): the store is PostgreSQL, not an SQLite file"),
        }
    }
}
