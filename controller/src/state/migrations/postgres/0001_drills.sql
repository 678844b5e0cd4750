-- Drills, their steps, attempts, variables and approvals, and the audit log.
-- Times are RFC 3339 text, as in the SQLite store: the audit chain hashes
-- the very string stored.
CREATE TABLE drills (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    runbook TEXT NOT NULL, runbook_file TEXT NOT NULL, runbook_hash TEXT NOT NULL,
    mode TEXT NOT NULL, started_by TEXT NOT NULL, host TEXT NOT NULL,
    started_at TEXT NOT NULL, finished_at TEXT, status TEXT NOT NULL,
    rto_target_ms BIGINT NOT NULL, rpo_target_ms BIGINT,
    rto_ms BIGINT, rpo_ms BIGINT, cut_at TEXT, recovery_point TEXT
);
CREATE TABLE steps (
    drill BIGINT NOT NULL REFERENCES drills(id), step TEXT NOT NULL, stage TEXT NOT NULL, kind TEXT NOT NULL,
    started_at TEXT NOT NULL, finished_at TEXT NOT NULL, attempts BIGINT NOT NULL, outcome TEXT NOT NULL,
    output TEXT NOT NULL, recovery_point TEXT, seq BIGINT NOT NULL,
    PRIMARY KEY (drill, step)
);
CREATE TABLE variables (
    drill BIGINT NOT NULL REFERENCES drills(id), name TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (drill, name)
);
CREATE TABLE approvals (
    drill BIGINT NOT NULL REFERENCES drills(id), step TEXT NOT NULL, approved BOOLEAN NOT NULL,
    actor TEXT NOT NULL, at TEXT NOT NULL,
    PRIMARY KEY (drill, step)
);
CREATE TABLE attempts (
    drill BIGINT NOT NULL REFERENCES drills(id), step TEXT NOT NULL, attempt BIGINT NOT NULL,
    started_at TEXT NOT NULL, finished_at TEXT, outcome TEXT NOT NULL, output TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (drill, step, attempt)
);
CREATE TABLE audit (
    seq BIGINT PRIMARY KEY, at TEXT NOT NULL, drill BIGINT, actor TEXT NOT NULL,
    event TEXT NOT NULL, detail TEXT NOT NULL, prev TEXT NOT NULL, hash TEXT NOT NULL
);
CREATE FUNCTION bascule_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only';
END
$$;
CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION bascule_audit_append_only();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION bascule_audit_append_only();
