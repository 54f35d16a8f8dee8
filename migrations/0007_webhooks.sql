-- Webhooks: endpoints, the event outbox and one delivery row per (event, target).
-- Events are inserted in the same transaction as the state change that raised them.

CREATE TABLE webhooks (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    events TEXT NOT NULL,                 -- space-separated event types, or '*'
    description TEXT,
    enabled INTEGER NOT NULL DEFAULT 1,
    secret TEXT NOT NULL,                 -- kept in clear: the hub must sign with it
    previous_secret TEXT,
    previous_secret_until TEXT,
    failing_since TEXT,
    disabled_at TEXT,
    disabled_reason TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE TABLE events (
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    subject TEXT NOT NULL,
    created_at TEXT NOT NULL,
    payload TEXT NOT NULL
);

CREATE TABLE webhook_deliveries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- creation order, for per-subject ordering
    id TEXT NOT NULL UNIQUE,
    event_id TEXT NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    target TEXT NOT NULL,                   -- webhook id, or 'callback'
    webhook_id TEXT REFERENCES webhooks (id) ON DELETE CASCADE,
    subject TEXT NOT NULL,
    url TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER,
    next_attempt_at TEXT,
    last_status_code INTEGER,
    last_error TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_order ON webhook_deliveries (target, subject, seq)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_by_hook ON webhook_deliveries (webhook_id, created_at, id);
CREATE INDEX webhook_deliveries_event ON webhook_deliveries (event_id);

CREATE TABLE webhook_attempts (
    delivery_id TEXT NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL,
    at TEXT NOT NULL,
    status_code INTEGER,
    error TEXT,
    duration_ms INTEGER NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);

ALTER TABLE messages ADD COLUMN callback_url TEXT;
CREATE INDEX messages_callback ON messages (id) WHERE callback_url IS NOT NULL;
