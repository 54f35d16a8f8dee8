-- Scheduling, priority, cancellation, client references, and idempotency keys
-- (PostgreSQL variant of 0002_scheduling_idempotency.sql).

ALTER TABLE messages ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN send_at TIMESTAMPTZ;
ALTER TABLE messages ADD COLUMN cancelled_at TIMESTAMPTZ;
ALTER TABLE messages ADD COLUMN custom_id TEXT COLLATE "C";
ALTER TABLE messages ADD COLUMN metadata JSONB;
ALTER TABLE messages ADD COLUMN encoding TEXT;

-- The outbox takes the highest priority first, oldest first within a priority.
CREATE INDEX messages_outbox ON messages (status, priority DESC, created_at, id);
CREATE INDEX messages_custom_id ON messages (custom_id);

-- One row per (API key, Idempotency-Key): the request's hash and, once done, its response.
CREATE TABLE idempotency_keys (
    owner         TEXT COLLATE "C" NOT NULL,
    key           TEXT COLLATE "C" NOT NULL,
    request_hash  TEXT NOT NULL,
    status_code   INTEGER,
    response      TEXT,
    created_at    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (owner, key)
);
CREATE INDEX idempotency_created ON idempotency_keys (created_at);
