-- Per-key rate limits (NULL: the hub's defaults). PostgreSQL variant of 0004_key_limits.sql
-- (the same SQL; kept so every version has a file for each engine).
ALTER TABLE api_keys ADD COLUMN rate_limit_rpm INTEGER;
ALTER TABLE api_keys ADD COLUMN daily_message_limit INTEGER;
