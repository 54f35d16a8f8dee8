-- Phones that run the stock "SMS Gateway for Android" app (PostgreSQL variant of
-- 0008_app_phones.sql): each phone's kind, the app registration tokens (hashed), and
-- when the app took a message in hand ("Processed").
ALTER TABLE devices ADD COLUMN kind TEXT NOT NULL DEFAULT 'agent';
ALTER TABLE messages ADD COLUMN processed_at TIMESTAMPTZ;

CREATE TABLE app_tokens (
    id           TEXT COLLATE "C" PRIMARY KEY,
    name         TEXT,
    prefix       TEXT COLLATE "C" NOT NULL UNIQUE,
    token_hash   TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    expires_at   TIMESTAMPTZ,
    revoked_at   TIMESTAMPTZ,
    last_used_at TIMESTAMPTZ
);
