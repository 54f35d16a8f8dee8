-- SMSGate's 3rd-party API (docs/smsgate-api.md): a message to several recipients is a
-- batch of kind 'smsgate' (one smsgw message per recipient); data and encrypted messages,
-- which only app phones can send; webhooks in SMSGate's shape (one event each, an
-- optional device filter); the API's settings and its revoked access tokens.
ALTER TABLE messages ADD COLUMN data_port INTEGER;            -- a data SMS: body is base64
ALTER TABLE messages ADD COLUMN encrypted INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN delivery_report INTEGER NOT NULL DEFAULT 1;

ALTER TABLE batches ADD COLUMN kind TEXT NOT NULL DEFAULT 'batch';
ALTER TABLE batches ADD COLUMN device_id TEXT;
CREATE INDEX batches_kind ON batches (kind, created_at);

ALTER TABLE webhooks ADD COLUMN format TEXT NOT NULL DEFAULT 'smsgw';
ALTER TABLE webhooks ADD COLUMN event_name TEXT;  -- SMSGate's name of its one event
ALTER TABLE webhooks ADD COLUMN device_id TEXT;   -- only this phone's events

CREATE TABLE hub_settings (
    name       TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE TABLE revoked_tokens (
    jti        TEXT PRIMARY KEY,
    expires_at TEXT NOT NULL
);
