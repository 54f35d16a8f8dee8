-- Phones that run the stock "SMS Gateway for Android" app (docs/smsgate-app.md) beside the
-- agent: which kind each phone is, the registration tokens an admin issues for the app
-- (only a hash is kept), and when the app said it took a message in hand ("Processed"),
-- after which its pulls stop returning that message.
ALTER TABLE devices ADD COLUMN kind TEXT NOT NULL DEFAULT 'agent';
ALTER TABLE messages ADD COLUMN processed_at TEXT;

CREATE TABLE app_tokens (
    id           TEXT PRIMARY KEY,
    name         TEXT,
    prefix       TEXT NOT NULL UNIQUE,
    token_hash   TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    expires_at   TEXT,
    revoked_at   TEXT,
    last_used_at TEXT
);
