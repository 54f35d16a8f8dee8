"""The node's live metrics: what happens, counted as it happens (prometheus_client).

``GET /metrics`` (smsgw/api/metrics.py) reads most of what it reports at scrape time from
what the hub keeps anyway (phones, outbox, messages by status). What cannot be read back
afterwards is counted here, when it happens: HTTP requests and their latency, a message's
changes of status by error code, its time from creation to SENT, offers that timed out,
failovers, each phone's sent/delivered/failed reports, and the SQLite writer's batches.

Each ``Hub`` has its own ``HubMetrics`` and registry, never prometheus_client's global
one: tests run several hubs in one process, and their counts must not mix. The scrape
merges this registry's families with the ones it reads.

**Per node.** Each node counts what it did: a phone's report on the node it reported to,
an accept and the dispatch latency on the node whose offer it was, a failover on the node
that made the new offer. Sum over the nodes in PromQL (``sum by (device)``, ...).

Cost on a message's path: a counter increment is a lock and an add (a few hundred ns),
a histogram observation a few of them; the label children are looked up once and kept
(``labels()`` costs more than the increment). The SQLite writer thread observes its
batches here too: prometheus_client's values carry their own locks.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics

from smsgw.store import Status, Store
from smsgw.store.sqlite import SqliteDriver

# No ``*_created`` series: Prometheus' text format needs none, and per phone they would
# double the series of every counter. Read when a scrape renders, so this process-wide
# switch covers every hub's registry.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Error codes kept as themselves in ``smsgw_message_transitions_total{error}``; any other
# is ``other``, since a phone may send any text (docs/protocol.md: up to 64 chars) and a
# label value per distinct text would grow the series without bound.
KNOWN_ERRORS = frozenset(
    {
        # the hub's own (smsgw/store/rules.py)
        "expired",
        "max_attempts",
        "device_removed",
        # the agent (android_client: termux, modem, the client itself)
        "backend_error",
        "cannot_encode",
        "generic_failure",
        "invalid_number",
        "modem_error",
        "modem_timeout",
        "modem_unavailable",
        "no_sim",
        "no_such_sim",
        "send_unconfirmed",
        "termux_missing",
        "termux_send_failed",
        "termux_timeout",
        # the stock app (smsgw/appwire.py failure_code: Android's RESULT_ERROR_* codes)
        "app_failed",
        "cancelled_on_phone",
        "error_fdn_check_failure",
        "error_generic_failure",
        "error_limit_exceeded",
        "error_no_service",
        "error_null_pdu",
        "error_radio_off",
        "error_short_code_never_allowed",
        "error_short_code_not_allowed",
    }
)
OTHER_ERROR = "other"

# What a phone's report counts as in smsgw_phone_messages_total{outcome}: a failure is a
# failure of that phone whether the message then goes to another phone or fails.
OUTCOMES = {Status.SENT: "sent", Status.DELIVERED: "delivered", Status.FAILED: "failed",
            Status.PENDING: "failed"}  # fmt: skip

HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# From creation to SENT: milliseconds on a direct dispatch, minutes for a backlog.
DISPATCH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    120.0, 300.0, 600.0, 1800.0, 3600.0)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)  # MAX_BATCH is 512
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

# HTTP methods kept as themselves; any other is "other" (a client chooses the text).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def error_label(code: str | None) -> str:
    """The ``error`` label of a transition: "" without one, unknown codes as ``other``."""
    if not code:
        return ""
    return code if code in KNOWN_ERRORS else OTHER_ERROR


class HubMetrics:
    """One node's counters and histograms, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter(
            "smsgw_http_requests", "HTTP requests answered, by route template and status",
            ["method", "route", "status"], registry=r,
        )  # fmt: skip
        self.http_seconds = Histogram(
            "smsgw_http_request_duration_seconds",
            "Seconds from a request's arrival to its response's start, by route template",
            ["method", "route"], buckets=HTTP_BUCKETS, registry=r,
        )  # fmt: skip
        self.transitions = Counter(
            "smsgw_message_transitions",
            "Changes of a message's status made on this node, by new status and error code",
            ["status", "error"], registry=r,
        )  # fmt: skip
        self.dispatch_seconds = Histogram(
            "smsgw_dispatch_seconds",
            "Seconds from a message's creation (or its send_at) to its SENT report",
            buckets=DISPATCH_BUCKETS, registry=r,
        )  # fmt: skip
        self.offer_timeouts = Counter(
            "smsgw_offer_timeouts", "Offers the phone did not answer within its accept timeout",
            registry=r,
        )  # fmt: skip
        self.failovers = Counter(
            "smsgw_failovers",
            "Offers of a message an earlier offer did not get out (attempt 2 and later)",
            registry=r,
        )  # fmt: skip
        self.phone_messages = Counter(
            "smsgw_phone_messages", "A phone's sent, delivered and failed reports",
            ["device", "outcome"], registry=r,
        )  # fmt: skip
        self.store_batch_size = Histogram(
            "smsgw_store_batch_size", "Writes per SQLite transaction (group commit)",
            buckets=BATCH_BUCKETS, registry=r,
        )  # fmt: skip
        self.store_commit_seconds = Histogram(
            "smsgw_store_commit_seconds",
            "Seconds per SQLite batch transaction, BEGIN to the end of COMMIT (its fsync)",
            buckets=COMMIT_BUCKETS, registry=r,
        )  # fmt: skip
        # Label children, looked up once (event loop only; the writer thread uses none).
        self._http: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._transitions: dict[tuple[Status, str], Counter] = {}
        self._phones: dict[tuple[str, str], Counter] = {}

    # -- HTTP (smsgw/httpmetrics.py) -------------------------------------------------

    def http_request(self, method: str, route: str, status: int, seconds: float) -> None:
        if method not in METHODS:
            method = "other"  # keyed by the label, not the client's text: bounded
        key = (method, route, status)
        children = self._http.get(key)
        if children is None:
            children = self._http[key] = (
                self.http_requests.labels(method, route, str(status)),
                self.http_seconds.labels(method, route),
            )
        children[0].inc()
        children[1].observe(seconds)

    # -- messages ------------------------------------------------------------------------

    def transition(self, status: Status, error_code: str | None = None, count: int = 1) -> None:
        """``count`` messages moved to ``status`` (with ``error_code``) on this node."""
        key = (status, error_label(error_code))
        child = self._transitions.get(key)
        if child is None:
            child = self._transitions[key] = self.transitions.labels(status.value, key[1])
        child.inc(count)

    def reported(self, device_id: str, status: Status, error_code: str | None = None) -> None:
        """A phone's sent/delivered/failed report changed a message (stored on this node)
        to ``status``: PENDING again after a retryable failure, FAILED, SENT, DELIVERED."""
        self.transition(status, error_code)
        outcome = OUTCOMES.get(status)
        if outcome is None:
            return
        key = (device_id, outcome)
        child = self._phones.get(key)
        if child is None:
            child = self._phones[key] = self.phone_messages.labels(device_id, outcome)
        child.inc()

    def dispatched(self, seconds: float) -> None:
        self.dispatch_seconds.observe(max(0.0, seconds))

    # -- per-phone series ------------------------------------------------------------

    def forget_device(self, device_id: str) -> None:
        """The phone was removed: its series go from the next scrape."""
        for key in [k for k in self._phones if k[0] == device_id]:
            del self._phones[key]
            self.phone_messages.remove(*key)

    def keep_devices(self, device_ids: set[str]) -> None:
        """Drop the series of phones not in ``device_ids`` (the enrolled ones): a phone
        removed through another node, or between a report and its removal here."""
        for device_id in {k[0] for k in self._phones} - device_ids:
            self.forget_device(device_id)

    # -- the SQLite writer (its own thread) ---------------------------------------------

    def watch_store(self, store: Store) -> None:
        """Observe ``store``'s batches if it is SQLite's group-commit writer (PostgreSQL's
        pool is read at scrape time instead: smsgw/api/metrics.py)."""
        if isinstance(store.driver, SqliteDriver):
            store.driver.on_batch = self.store_batch

    def store_batch(self, writes: int, seconds: float) -> None:
        self.store_batch_size.observe(writes)
        self.store_commit_seconds.observe(seconds)
