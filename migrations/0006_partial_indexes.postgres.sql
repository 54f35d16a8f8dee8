-- Indexes that only hold the rows their queries look for (PostgreSQL variant of
-- 0006_partial_indexes.sql, the same partial indexes). Most messages are finished: they
-- should not be in the outbox index, and most have no custom_id or batch; keeping them
-- out makes every status change touch fewer index entries.
DROP INDEX messages_status_due;
DROP INDEX messages_outbox;
DROP INDEX messages_custom_id;
DROP INDEX messages_batch;
DROP INDEX messages_device_status;
CREATE INDEX messages_outbox ON messages (priority DESC, created_at, id) WHERE status = 'PENDING';
CREATE INDEX messages_owned ON messages (device_id) WHERE status = 'QUEUED';
CREATE INDEX messages_device ON messages (device_id, created_at) WHERE device_id IS NOT NULL;
CREATE INDEX messages_custom_id ON messages (custom_id) WHERE custom_id IS NOT NULL;
CREATE INDEX messages_batch ON messages (batch_id, status) WHERE batch_id IS NOT NULL;
-- PostgreSQL only: removing a device ends its open attempts; without this that is a scan
-- of every attempt ever made.
CREATE INDEX message_attempts_open ON message_attempts (device_id) WHERE ended_at IS NULL;
