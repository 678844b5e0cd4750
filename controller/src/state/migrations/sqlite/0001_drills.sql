-- Drills, their steps, attempts, variables and approvals, and the audit log.
-- IF NOT EXISTS: a store made before versioned migrations adopts this one.
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
