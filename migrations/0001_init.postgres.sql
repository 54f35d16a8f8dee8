-- smsgw initial schema, PostgreSQL variant of 0001_init.sql. Timestamps are timestamptz,
-- JSON is jsonb, flags are boolean. Text that is compared or sorted (ids, names, numbers)
-- uses the "C" collation, so ordering and keyset pages match SQLite's byte order whatever
-- the database's default collation is.

CREATE TABLE api_keys (
    id            TEXT COLLATE "C" PRIMARY KEY,
    name          TEXT NOT NULL,
    prefix        TEXT COLLATE "C" NOT NULL UNIQUE,
    key_hash      TEXT NOT NULL,
    scopes        TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    last_used_at  TIMESTAMPTZ,
    revoked_at    TIMESTAMPTZ
);

CREATE TABLE enrollment_codes (
    code_hash   TEXT COLLATE "C" PRIMARY KEY,
    created_at  TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL,
    used_at     TIMESTAMPTZ,
    device_id   TEXT COLLATE "C"
);

CREATE TABLE devices (
    id            TEXT COLLATE "C" PRIMARY KEY,
    name          TEXT NOT NULL,
    hardware_id   TEXT COLLATE "C" NOT NULL UNIQUE,
    token_prefix  TEXT COLLATE "C" UNIQUE,
    token_hash    TEXT,
    sims          JSONB NOT NULL DEFAULT '[]',
    fcm_token     TEXT,
    enabled       BOOLEAN NOT NULL DEFAULT TRUE,
    daily_quota   INTEGER,
    sent_today    INTEGER NOT NULL DEFAULT 0,
    sent_day      TEXT,
    battery       INTEGER,
    charging      BOOLEAN,
    signal        INTEGER,
    network       TEXT,
    app_version   TEXT,
    last_seen_at  TIMESTAMPTZ,
    created_at    TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL,
    revoked_at    TIMESTAMPTZ
);

-- device_id: the owner once QUEUED; while PENDING, the phone the message is offered to
-- (with lease_until) or NULL. attempt counts offers and fences late answers.
CREATE TABLE messages (
    id                TEXT COLLATE "C" PRIMARY KEY,
    recipient         TEXT COLLATE "C" NOT NULL,
    body              TEXT NOT NULL,
    status            TEXT NOT NULL,
    device_id         TEXT COLLATE "C",
    pinned_device_id  TEXT COLLATE "C",
    sim_slot          INTEGER,
    parts             INTEGER NOT NULL DEFAULT 1,
    attempt           INTEGER NOT NULL DEFAULT 0,
    lease_until       TIMESTAMPTZ,
    next_attempt_at   TIMESTAMPTZ,
    error_code        TEXT,
    error             TEXT,
    created_at        TIMESTAMPTZ NOT NULL,
    updated_at        TIMESTAMPTZ NOT NULL,
    queued_at         TIMESTAMPTZ,
    sent_at           TIMESTAMPTZ,
    delivered_at      TIMESTAMPTZ,
    failed_at         TIMESTAMPTZ,
    expires_at        TIMESTAMPTZ NOT NULL
);
CREATE INDEX messages_status_due ON messages (status, next_attempt_at);
CREATE INDEX messages_created ON messages (created_at, id);
CREATE INDEX messages_device_status ON messages (device_id, status);

CREATE TABLE message_attempts (
    message_id   TEXT COLLATE "C" NOT NULL,
    attempt      INTEGER NOT NULL,
    device_id    TEXT COLLATE "C" NOT NULL,
    offered_at   TIMESTAMPTZ NOT NULL,
    accepted_at  TIMESTAMPTZ,
    ended_at     TIMESTAMPTZ,
    outcome      TEXT,
    error_code   TEXT,
    error        TEXT,
    PRIMARY KEY (message_id, attempt)
);

CREATE TABLE inbound_messages (
    id           TEXT COLLATE "C" PRIMARY KEY,
    device_id    TEXT COLLATE "C" NOT NULL,
    local_id     TEXT COLLATE "C" NOT NULL,
    sender       TEXT COLLATE "C" NOT NULL,
    body         TEXT NOT NULL,
    sim_slot     INTEGER,
    received_at  TIMESTAMPTZ NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    UNIQUE (device_id, local_id)
);
CREATE INDEX inbound_created ON inbound_messages (created_at, id);

-- The phone that last sent to a recipient: conversations keep coming from one number.
CREATE TABLE recipient_affinity (
    recipient   TEXT COLLATE "C" PRIMARY KEY,
    device_id   TEXT COLLATE "C" NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX recipient_affinity_recent ON recipient_affinity (updated_at);
