-- The dashboard (smsgw/ui/, docs/dashboard.md): who is signed in, and the indexes of its
-- searches (a recipient's messages, a message's webhook deliveries) so a page reads one
-- page of rows however many millions the tables hold.
CREATE TABLE ui_sessions (
    id_hash    TEXT PRIMARY KEY,  -- SHA-256 of the cookie's session id: the cookie is not stored
    key_id     TEXT REFERENCES api_keys (id) ON DELETE CASCADE,  -- NULL: SMSGW_ADMIN_KEY
    env_key    TEXT,              -- with key_id NULL: the hash of the admin key signed in with
    csrf       TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
CREATE INDEX ui_sessions_key ON ui_sessions (key_id);
CREATE INDEX ui_sessions_expiry ON ui_sessions (expires_at);
CREATE INDEX messages_recipient ON messages (recipient, created_at);
CREATE INDEX webhook_deliveries_subject ON webhook_deliveries (subject, created_at);
CREATE INDEX message_attempts_failover ON message_attempts (offered_at) WHERE attempt > 1;
