-- Per-key rate limits (NULL: the hub's defaults).
ALTER TABLE api_keys ADD COLUMN rate_limit_rpm INTEGER;
ALTER TABLE api_keys ADD COLUMN daily_message_limit INTEGER;
