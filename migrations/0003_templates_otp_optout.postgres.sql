-- Templates, one-time passwords, the opt-out list, and hub secrets
-- (PostgreSQL variant of 0003_templates_otp_optout.sql).

CREATE TABLE templates (
    id           TEXT COLLATE "C" PRIMARY KEY,
    name         TEXT COLLATE "C" NOT NULL UNIQUE,
    body         TEXT NOT NULL,
    category     TEXT COLLATE "C",
    active       BOOLEAN NOT NULL DEFAULT TRUE,
    usage_count  INTEGER NOT NULL DEFAULT 0,
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL
);

-- Only a keyed hash of each code is stored (HMAC with the hub's otp secret).
CREATE TABLE otp_codes (
    id             TEXT COLLATE "C" PRIMARY KEY,
    recipient      TEXT COLLATE "C" NOT NULL,
    code_hash      TEXT NOT NULL,
    message_id     TEXT COLLATE "C" NOT NULL,
    attempts       INTEGER NOT NULL DEFAULT 0,
    max_attempts   INTEGER NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL,
    expires_at     TIMESTAMPTZ NOT NULL,
    verified_at    TIMESTAMPTZ,
    superseded_at  TIMESTAMPTZ
);
CREATE INDEX otp_recipient ON otp_codes (recipient, created_at);

CREATE TABLE opt_outs (
    number      TEXT COLLATE "C" PRIMARY KEY,
    source      TEXT NOT NULL,
    reason      TEXT,
    created_at  TIMESTAMPTZ NOT NULL
);

CREATE TABLE hub_secrets (
    name   TEXT COLLATE "C" PRIMARY KEY,
    value  TEXT NOT NULL
);

-- Messages whose body must never be shown by the API (OTP codes).
ALTER TABLE messages ADD COLUMN sensitive BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE messages ADD COLUMN template_id TEXT COLLATE "C";
