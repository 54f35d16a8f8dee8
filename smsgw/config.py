"""Hub configuration, read from ``SMSGW_*`` environment variables (see the README table)."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SMSGW_", extra="ignore")

    database_url: str = "sqlite:///./smsgw.db"
    host: str = "0.0.0.0"
    port: int = Field(default=9000, ge=0, le=65535)
    # Public base URL phones should use; derived from the request when unset.
    public_url: str | None = None
    # GET /metrics takes this Bearer token; unset: an admin API key (never open).
    metrics_token: str | None = None
    # A dashboard sign-in lasts this long (seconds); signing out or revoking the key ends it.
    ui_session_ttl: float = Field(default=12 * 3600, gt=0)
    # The agent in one file (``make agent``), served at GET /agent/smsgw-agent.pyz.
    agent_pyz: str = "dist/smsgw-agent.pyz"
    admin_key: str | None = None
    # Proxies whose X-Forwarded-For names the client (uvicorn's forwarded_allow_ips: a
    # comma-separated list of addresses or networks, or "*"). Unset: uvicorn's default,
    # $FORWARDED_ALLOW_IPS or else 127.0.0.1 and ::1.
    forwarded_allow_ips: str | None = None
    # Slow clients (smsgw/deadlines.py): a request's head, and then its body, must arrive
    # within these many seconds, or the connection is closed.
    http_head_timeout: float = Field(default=10.0, gt=0)
    http_body_timeout: float = Field(default=30.0, gt=0)
    log_level: str = "info"
    log_format: Literal["text", "json"] = "text"  # json: one object per line (smsgw/logs.py)
    # HTTPS (docs/smsgate-app.md): a certificate chain and its key, e.g. from
    # ``smsgw tls init``. Both or neither.
    tls_cert: str | None = None
    tls_key: str | None = None

    heartbeat_interval: float = Field(default=30.0, gt=0)
    accept_timeout: float = Field(default=5.0, gt=0)
    # An app phone's pull runs through Android's job scheduler: it gets longer to accept.
    app_accept_timeout: float = Field(default=10.0, gt=0)
    # Settings handed to app phones (GET /api/mobile/v1/settings; docs/smsgate-app.md):
    # ping.interval_seconds (the app pulls at each ping) and webhooks.internet_required
    # (False on a LAN without internet). Unset: the app keeps its own.
    app_ping_interval: int | None = Field(default=None, ge=1)
    app_webhooks_internet_required: bool | None = None
    # Opt-in: wake app phones in FCM mode through the app project's public push relay,
    # e.g. https://api.sms-gate.app/upstream/v1/push (docs/smsgate-app.md). It allows 5
    # requests a minute per address: one round per interval at most.
    app_push_relay_url: str | None = None
    app_push_relay_interval: float = Field(default=12.0, gt=0)
    dispatch_deadline: float = Field(default=10.0, gt=0)
    message_ttl: float = Field(default=24 * 3600.0, gt=0)
    default_daily_quota: int = Field(default=90, ge=0)
    max_in_flight: int = Field(default=8, ge=1)
    max_attempts: int = Field(default=10, ge=1)
    affinity_cache_size: int = Field(default=100_000, ge=0)
    default_region: str | None = None  # ISO country for national numbers, e.g. "US"
    max_segments: int = Field(default=10, ge=1, le=50)
    otp_max_attempts: int = Field(default=5, ge=1)
    otp_resend_cooldown: float = Field(default=60.0, ge=0)
    otp_max_per_hour: int = Field(default=5, ge=1)
    otp_priority: int = 100  # OTP messages leave the outbox ahead of ordinary traffic
    key_rate_limit_rpm: int | None = Field(default=None, ge=1)  # default per-key limits
    key_daily_messages: int | None = Field(default=None, ge=1)
    recipient_hourly_limit: int | None = Field(default=30, ge=1)  # anti SMS pumping
    # Failed authentications per client address within the window before further failures
    # get 429 instead of 401 (valid credentials are still served); 0: off.
    auth_failure_limit: int = Field(default=20, ge=0)
    auth_failure_window: float = Field(default=60.0, gt=0)
    # Failed OTP verifications per number per hour, across its codes (then 429).
    otp_max_failures_per_hour: int = Field(default=10, ge=1)
    retry_backoff: float = Field(default=5.0, ge=0)
    outbox_interval: float = Field(default=1.0, gt=0)
    # Several nodes (docs/deploy.md): Redis carries phone ownership, presence and commands
    # between nodes; unset = one node with an in-process registry.
    redis_url: str | None = None
    redis_prefix: str = "smsgw:"  # key and channel prefix (several clusters on one Redis)
    node_id: str | None = None  # random at each start when unset
    ownership_ttl: float = Field(default=15.0, gt=0)  # a dead node's phones free up after this
    presence_interval: float = Field(default=5.0, gt=0)  # ownership refresh and state sweep
    # SIGTERM: finish offers for up to drain_timeout seconds, then ask the phones to
    # reconnect (elsewhere) after a random delay of up to drain_spread seconds.
    drain_timeout: float = Field(default=8.0, ge=0)
    drain_spread: float = Field(default=5.0, ge=0)
    enrollment_code_ttl: float = Field(default=600.0, gt=0)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    max_batch_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    max_message_chars: int = Field(default=1600, ge=1)
    ws_max_frame_bytes: int = Field(default=64 * 1024, ge=1024)
    # Connections the kernel queues before the hub accepts them. When a farm reconnects at
    # once (a hub restart, a network blip), the queue overflows and every SYN it drops
    # waits 1, 3, 7, 15 s for its retry. The kernel caps this at net.core.somaxconn.
    listen_backlog: int = Field(default=65535, ge=1)
    sqlite_synchronous: str = "FULL"
    # PostgreSQL connection pool per hub node (SMSGW_DB_POOL_SIZE is the maximum).
    db_pool_size: int = Field(default=10, ge=1)
    db_pool_min_size: int = Field(default=1, ge=0)
    # FCM wake-up (smsgw/wakeup.py): the service-account JSON; unset = wake-up off. The
    # seed's FIREBASE_SERVICE_ACCOUNT_PATH is accepted too; SMSGW_ wins when both are set.
    firebase_credentials: str | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "SMSGW_FIREBASE_CREDENTIALS", "FIREBASE_SERVICE_ACCOUNT_PATH", "firebase_credentials"
        ),
    )
    fcm_wake_interval: float = Field(default=30.0, gt=0)  # seconds between wakes of one phone
    # Webhooks: ~10 attempts over about a day (seconds between attempts, jittered ±20%).
    webhook_retry_schedule: list[float] = Field(
        default=[30, 120, 600, 1800, 3600, 7200, 14400, 21600, 36000], min_length=1
    )
    webhook_timeout: float = Field(default=10.0, gt=0)
    webhook_concurrency: int = Field(default=4, ge=1)  # requests in flight per endpoint
    webhook_disable_after: float = Field(default=3 * 86400.0, gt=0)  # failing this long
    webhook_secret_grace: float = Field(default=86400.0, ge=0)  # old secret signs this long
    webhook_poll_interval: float = Field(default=1.0, gt=0)
    # Routes beyond phones (docs/routes.md): how often the route worker looks for messages
    # a route may take, how long a transient refusal waits, and how long a claimed message
    # may wait for the provider's answer before it is FAILED route_unknown (at most once).
    route_poll_interval: float = Field(default=1.0, gt=0)
    route_retry_delay: float = Field(default=30.0, gt=0)
    route_answer_timeout: float = Field(default=120.0, gt=0)
    webhook_retention: float = Field(default=7 * 86400.0, gt=0)  # finished deliveries kept
    callback_secret: str | None = None  # signs callback_url requests; generated when unset
    # Seals the secrets the hub signs with in the database (smsgw/secretbox.py); unset: in
    # clear. _PREVIOUS: an old key that still opens what it sealed (rotation).
    secret_key: SecretStr | None = None
    secret_key_previous: SecretStr | None = None

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("set both SMSGW_TLS_CERT and SMSGW_TLS_KEY, or neither")
        return self

    @property
    def database_url_redacted(self) -> str:
        """The database URL safe to print: any password replaced by ``***``."""
        return redact_url(self.database_url)

    @property
    def sqlite_path(self) -> str:
        prefix = "sqlite:///"
        if not self.database_url.startswith(prefix):
            raise ValueError(f"not a sqlite URL: {self.database_url}")
        return self.database_url[len(prefix) :]


def redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
