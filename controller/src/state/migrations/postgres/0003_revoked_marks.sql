-- The mark of each revoked agent key of a tenant: the highest HEAD sequence
-- seen when a replica first ran with the key revoked. The first replica to
-- record it wins (insert-if-absent), so that every replica judges a HEAD
-- that key signed alike; a mark is never changed afterwards.
CREATE TABLE revoked_marks (
    tenant TEXT NOT NULL,
    key TEXT NOT NULL,
    mark BIGINT NOT NULL CHECK (mark >= 0),
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, key)
);
CREATE FUNCTION bascule_revoked_mark_fixed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'a revoked key''s mark is set once';
END
$$;
CREATE TRIGGER revoked_marks_fixed BEFORE UPDATE ON revoked_marks
    FOR EACH ROW EXECUTE FUNCTION bascule_revoked_mark_fixed();

-- Rollback marks are not deleted either (a deleted mark would let a
-- provider replay an old HEAD): an operator who means it disables the
-- trigger, knowing why.
CREATE FUNCTION bascule_mark_kept() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'rollback marks are not deleted (a provider could then replay an old HEAD)';
END
$$;
CREATE TRIGGER head_marks_kept BEFORE DELETE ON head_marks
    FOR EACH ROW EXECUTE FUNCTION bascule_mark_kept();
CREATE TRIGGER head_marks_not_truncated BEFORE TRUNCATE ON head_marks
    FOR EACH STATEMENT EXECUTE FUNCTION bascule_mark_kept();
