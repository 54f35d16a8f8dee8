-- Routes beyond phones (issue 22, docs/routes.md): provider accounts a message may leave
-- by when no phone takes it, or when the caller forces one. A message a route owns has
-- route_id set and device_id NULL; route_message_id is the provider's id for it, which
-- its delivery callbacks name.
CREATE TABLE routes (
    id                TEXT PRIMARY KEY,
    kind              TEXT NOT NULL,      -- 'twilio', 'sns' (later: vonage, plivo, ...)
    name              TEXT NOT NULL UNIQUE,
    enabled           INTEGER NOT NULL DEFAULT 1,
    credentials       TEXT NOT NULL,      -- JSON, sealed by the store's secret box
    sender            TEXT,
    priority          INTEGER NOT NULL DEFAULT 0,
    policy            TEXT NOT NULL DEFAULT '{}',
    api_base_url      TEXT,
    price_per_segment REAL,
    currency          TEXT,
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL
);

ALTER TABLE messages ADD COLUMN route_id TEXT;
ALTER TABLE messages ADD COLUMN route_message_id TEXT;
ALTER TABLE messages ADD COLUMN cost REAL;
ALTER TABLE messages ADD COLUMN currency TEXT;
ALTER TABLE messages ADD COLUMN sms_type TEXT;
-- The caller forced the route: a retryable refusal puts it back bound to that route.
ALTER TABLE messages ADD COLUMN route_forced INTEGER NOT NULL DEFAULT 0;
CREATE INDEX messages_route_message ON messages (route_id, route_message_id)
    WHERE route_id IS NOT NULL;
-- A route's attempts have no phone: device_id holds 'route:<id>' (NOT NULL since 0001).
ALTER TABLE message_attempts ADD COLUMN route_id TEXT;
