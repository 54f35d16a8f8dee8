-- SMSGate's 3rd-party API (PostgreSQL variant of 0009_smsgate_api.sql): grouped
-- messages as batches of kind 'smsgate', data and encrypted messages (app phones only),
-- webhooks in SMSGate's shape, the API's settings and its revoked access tokens.
ALTER TABLE messages ADD COLUMN data_port INTEGER;
ALTER TABLE messages ADD COLUMN encrypted BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE messages ADD COLUMN delivery_report BOOLEAN NOT NULL DEFAULT TRUE;

ALTER TABLE batches ADD COLUMN kind TEXT NOT NULL DEFAULT 'batch';
ALTER TABLE batches ADD COLUMN device_id TEXT;
CREATE INDEX batches_kind ON batches (kind, created_at);

ALTER TABLE webhooks ADD COLUMN format TEXT NOT NULL DEFAULT 'smsgw';
ALTER TABLE webhooks ADD COLUMN event_name TEXT;
ALTER TABLE webhooks ADD COLUMN device_id TEXT;

CREATE TABLE hub_settings (
    name       TEXT COLLATE "C" PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE revoked_tokens (
    jti        TEXT COLLATE "C" PRIMARY KEY,
    expires_at TIMESTAMPTZ NOT NULL
);
