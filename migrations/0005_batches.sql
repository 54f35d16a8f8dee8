-- Bulk sends: a batch groups the messages of one request.
CREATE TABLE batches (
    id          TEXT PRIMARY KEY,
    name        TEXT,
    total       INTEGER NOT NULL,
    rejected    INTEGER NOT NULL,
    created_at  TEXT NOT NULL
);
ALTER TABLE messages ADD COLUMN batch_id TEXT;
CREATE INDEX messages_batch ON messages (batch_id, status);
