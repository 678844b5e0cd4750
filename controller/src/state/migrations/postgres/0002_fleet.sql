-- What several controller processes share: rollback marks, the replicas
-- alive, leases on tenants and drills, the monitor's last-seen state, and
-- scheduled work claimed once.

-- The highest HEAD sequence seen per `<tenant>@<provider>`: raised with an
-- upsert that keeps the greater, and never lowered by an update.
CREATE TABLE head_marks (
    name TEXT PRIMARY KEY,
    sequence BIGINT NOT NULL CHECK (sequence >= 0),
    raised_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE FUNCTION bascule_mark_never_lowered() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.sequence < OLD.sequence THEN
        RAISE EXCEPTION 'rollback mark % cannot go down from % to %', OLD.name, OLD.sequence, NEW.sequence;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER head_marks_never_lowered BEFORE UPDATE ON head_marks
    FOR EACH ROW EXECUTE FUNCTION bascule_mark_never_lowered();

-- Each `serve` process, with the time it last said it was alive.
CREATE TABLE replicas (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    seen_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One row per thing held by one replica at a time (kind `tenant`: its
-- monitoring and scheduled work; kind `drill`: a running drill). The epoch
-- grows at every change of holder; writes made under a lease name it.
CREATE TABLE leases (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    holder TEXT,
    epoch BIGINT NOT NULL DEFAULT 0,
    expires_at TIMESTAMPTZ NOT NULL DEFAULT '-infinity',
    PRIMARY KEY (kind, name)
);
CREATE INDEX leases_by_holder ON leases (holder, kind);

-- The monitor's last reading of each tenant (both providers, as JSON),
-- written by the tenant's holder only (its epoch), read by every replica's
-- API.
CREATE TABLE monitor_state (
    tenant TEXT PRIMARY KEY,
    view TEXT NOT NULL,
    holder TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Scheduled work that runs once however many replicas see it due (a
-- scheduled drill at a given time): the first to insert the key runs it.
CREATE TABLE work (
    key TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    claimed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    done_at TIMESTAMPTZ,
    outcome TEXT
);
