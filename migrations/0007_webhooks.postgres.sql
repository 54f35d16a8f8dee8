-- Webhooks: endpoints, the event outbox and one delivery row per (event, target)
-- (PostgreSQL variant of 0007_webhooks.sql). Events are inserted in the same transaction
-- as the state change that raised them. An event's payload stays TEXT, not JSONB: it is
-- the exact body that is signed and sent, byte for byte, on every retry.

CREATE TABLE webhooks (
    id TEXT COLLATE "C" PRIMARY KEY,
    url TEXT NOT NULL,
    events TEXT NOT NULL,                 -- space-separated event types, or '*'
    description TEXT,
    enabled BOOLEAN NOT NULL DEFAULT TRUE,
    secret TEXT NOT NULL,                 -- kept in clear: the hub must sign with it
    previous_secret TEXT,
    previous_secret_until TIMESTAMPTZ,
    failing_since TIMESTAMPTZ,
    disabled_at TIMESTAMPTZ,
    disabled_reason TEXT,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE events (
    id TEXT COLLATE "C" PRIMARY KEY,
    type TEXT NOT NULL,
    subject TEXT COLLATE "C" NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    payload TEXT NOT NULL
);

CREATE TABLE webhook_deliveries (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- creation order, per-subject order
    id TEXT COLLATE "C" NOT NULL UNIQUE,
    event_id TEXT COLLATE "C" NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    target TEXT COLLATE "C" NOT NULL,     -- webhook id, or 'callback'
    webhook_id TEXT COLLATE "C" REFERENCES webhooks (id) ON DELETE CASCADE,
    subject TEXT COLLATE "C" NOT NULL,
    url TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER,
    next_attempt_at TIMESTAMPTZ,
    last_status_code INTEGER,
    last_error TEXT,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_order ON webhook_deliveries (target, subject, seq)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_by_hook ON webhook_deliveries (webhook_id, created_at, id);
CREATE INDEX webhook_deliveries_event ON webhook_deliveries (event_id);

CREATE TABLE webhook_attempts (
    delivery_id TEXT COLLATE "C" NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL,
    at TIMESTAMPTZ NOT NULL,
    status_code INTEGER,
    error TEXT,
    duration_ms INTEGER NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);

ALTER TABLE messages ADD COLUMN callback_url TEXT;
CREATE INDEX messages_callback ON messages (id) WHERE callback_url IS NOT NULL;
