-- The dashboard (PostgreSQL variant of 0010_dashboard.sql): who is signed in, and the
-- indexes of its searches (a recipient's messages, a message's webhook deliveries).
CREATE TABLE ui_sessions (
    id_hash    TEXT COLLATE "C" PRIMARY KEY,  -- SHA-256 of the cookie's session id
    key_id     TEXT COLLATE "C" REFERENCES api_keys (id) ON DELETE CASCADE,  -- NULL: SMSGW_ADMIN_KEY
    env_key    TEXT,              -- with key_id NULL: the hash of the admin key signed in with
    csrf       TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX ui_sessions_key ON ui_sessions (key_id);
CREATE INDEX ui_sessions_expiry ON ui_sessions (expires_at);
CREATE INDEX messages_recipient ON messages (recipient, created_at);
CREATE INDEX webhook_deliveries_subject ON webhook_deliveries (subject, created_at);
CREATE INDEX message_attempts_failover ON message_attempts (offered_at) WHERE attempt > 1;
