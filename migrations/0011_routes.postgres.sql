-- Routes beyond phones (PostgreSQL variant of 0011_routes.sql, docs/routes.md).
CREATE TABLE routes (
    id                TEXT COLLATE "C" PRIMARY KEY,
    kind              TEXT NOT NULL,
    name              TEXT COLLATE "C" NOT NULL UNIQUE,
    enabled           BOOLEAN NOT NULL DEFAULT TRUE,
    credentials       TEXT NOT NULL,      -- JSON, sealed by the store's secret box
    sender            TEXT,
    priority          INTEGER NOT NULL DEFAULT 0,
    policy            TEXT NOT NULL DEFAULT '{}',
    api_base_url      TEXT,
    price_per_segment DOUBLE PRECISION,
    currency          TEXT,
    created_at        TIMESTAMPTZ NOT NULL,
    updated_at        TIMESTAMPTZ NOT NULL
);

ALTER TABLE messages ADD COLUMN route_id TEXT COLLATE "C";
ALTER TABLE messages ADD COLUMN route_message_id TEXT COLLATE "C";
ALTER TABLE messages ADD COLUMN cost DOUBLE PRECISION;
ALTER TABLE messages ADD COLUMN currency TEXT;
ALTER TABLE messages ADD COLUMN sms_type TEXT;
ALTER TABLE messages ADD COLUMN route_forced BOOLEAN NOT NULL DEFAULT FALSE;
CREATE INDEX messages_route_message ON messages (route_id, route_message_id)
    WHERE route_id IS NOT NULL;
ALTER TABLE message_attempts ADD COLUMN route_id TEXT COLLATE "C";
