-- Templates, one-time passwords, the opt-out list, and hub secrets.

CREATE TABLE templates (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    body         TEXT NOT NULL,
    category     TEXT,
    active       INTEGER NOT NULL DEFAULT 1,
    usage_count  INTEGER NOT NULL DEFAULT 0,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);

-- Only a keyed hash of each code is stored (HMAC with the hub's otp secret).
CREATE TABLE otp_codes (
    id             TEXT PRIMARY KEY,
    recipient      TEXT NOT NULL,
    code_hash      TEXT NOT NULL,
    message_id     TEXT NOT NULL,
    attempts       INTEGER NOT NULL DEFAULT 0,
    max_attempts   INTEGER NOT NULL,
    created_at     TEXT NOT NULL,
    expires_at     TEXT NOT NULL,
    verified_at    TEXT,
    superseded_at  TEXT
);
CREATE INDEX otp_recipient ON otp_codes (recipient, created_at);

CREATE TABLE opt_outs (
    number      TEXT PRIMARY KEY,
    source      TEXT NOT NULL,
    reason      TEXT,
    created_at  TEXT NOT NULL
);

CREATE TABLE hub_secrets (
    name   TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);

-- Messages whose body must never be shown by the API (OTP codes).
ALTER TABLE messages ADD COLUMN sensitive INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN template_id TEXT;
