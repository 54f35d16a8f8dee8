-- Bulk sends: a batch groups the messages of one request (PostgreSQL variant of
-- 0005_batches.sql).
CREATE TABLE batches (
    id          TEXT COLLATE "C" PRIMARY KEY,
    name        TEXT,
    total       INTEGER NOT NULL,
    rejected    INTEGER NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL
);
ALTER TABLE messages ADD COLUMN batch_id TEXT COLLATE "C";
CREATE INDEX messages_batch ON messages (batch_id, status);
