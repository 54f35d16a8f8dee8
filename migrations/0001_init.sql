-- smsgw initial schema. Timestamps are ISO-8601 UTC text (sortable), ids are UUID text.

CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    prefix        TEXT NOT NULL UNIQUE,
    key_hash      TEXT NOT NULL,
    scopes        TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    last_used_at  TEXT,
    revoked_at    TEXT
);

CREATE TABLE enrollment_codes (
    code_hash   TEXT PRIMARY KEY,
    created_at  TEXT NOT NULL,
    expires_at  TEXT NOT NULL,
    used_at     TEXT,
    device_id   TEXT
);

CREATE TABLE devices (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    hardware_id   TEXT NOT NULL UNIQUE,
    token_prefix  TEXT UNIQUE,
    token_hash    TEXT,
    sims          TEXT NOT NULL DEFAULT '[]',
    fcm_token     TEXT,
    enabled       INTEGER NOT NULL DEFAULT 1,
    daily_quota   INTEGER,
    sent_today    INTEGER NOT NULL DEFAULT 0,
    sent_day      TEXT,
    battery       INTEGER,
    charging      INTEGER,
    signal        INTEGER,
    network       TEXT,
    app_version   TEXT,
    last_seen_at  TEXT,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    revoked_at    TEXT
);

-- device_id: the owner once QUEUED; while PENDING, the phone the message is offered to
-- (with lease_until) or NULL. attempt counts offers and fences late answers.
CREATE TABLE messages (
    id                TEXT PRIMARY KEY,
    recipient         TEXT NOT NULL,
    body              TEXT NOT NULL,
    status            TEXT NOT NULL,
    device_id         TEXT,
    pinned_device_id  TEXT,
    sim_slot          INTEGER,
    parts             INTEGER NOT NULL DEFAULT 1,
    attempt           INTEGER NOT NULL DEFAULT 0,
    lease_until       TEXT,
    next_attempt_at   TEXT,
    error_code        TEXT,
    error             TEXT,
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL,
    queued_at         TEXT,
    sent_at           TEXT,
    delivered_at      TEXT,
    failed_at         TEXT,
    expires_at        TEXT NOT NULL
);
CREATE INDEX messages_status_due ON messages (status, next_attempt_at);
CREATE INDEX messages_created ON messages (created_at, id);
CREATE INDEX messages_device_status ON messages (device_id, status);

CREATE TABLE message_attempts (
    message_id   TEXT NOT NULL,
    attempt      INTEGER NOT NULL,
    device_id    TEXT NOT NULL,
    offered_at   TEXT NOT NULL,
    accepted_at  TEXT,
    ended_at     TEXT,
    outcome      TEXT,
    error_code   TEXT,
    error        TEXT,
    PRIMARY KEY (message_id, attempt)
);

CREATE TABLE inbound_messages (
    id           TEXT PRIMARY KEY,
    device_id    TEXT NOT NULL,
    local_id     TEXT NOT NULL,
    sender       TEXT NOT NULL,
    body         TEXT NOT NULL,
    sim_slot     INTEGER,
    received_at  TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    UNIQUE (device_id, local_id)
);
CREATE INDEX inbound_created ON inbound_messages (created_at, id);

-- The phone that last sent to a recipient: conversations keep coming from one number.
CREATE TABLE recipient_affinity (
    recipient   TEXT PRIMARY KEY,
    device_id   TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE INDEX recipient_affinity_recent ON recipient_affinity (updated_at);
