"""Prometheus metrics of the durable store and the live cache, named exactly as in the guide.

prometheus_client appends ``_total`` to counters, so ``Counter("nexus_db_connect")`` is
exposed as ``nexus_db_connect_total``. Gauges carry ``multiprocess_mode="livesum"`` so that
they add up across workers when ``PROMETHEUS_MULTIPROC_DIR`` is set (and drop dead workers).

Hot paths never call ``.labels(...)`` per request: :class:`DbMetrics` caches the children of
one ``db`` label value. Its per-query counters are buffered (plain ints folded into Prometheus
every second and before every scrape, :func:`engine.observability.metrics.buffered`): a
multiprocess increment is a shared-memory write and a pid check, and every query made four.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from engine.observability.metrics import buffered

DB_CONNECT = Counter(
    "nexus_db_connect", "The total number of all database connection requests.", ["db"]
)
DB_DISCONNECT = Counter(
    "nexus_db_disconnect", "The total number of all database disconnection requests.", ["db"]
)
DB_REQUEST = Counter("nexus_db_request", "The total number of all database requests sent.", ["db"])
DB_SUCCESS = Counter(
    "nexus_db_success",
    "The total number of all database requests executed successfully.",
    ["db", "command"],
)
DB_ERRORS = Counter("nexus_db_errors", "The total number of all database errors.", ["db", "code"])
DB_REQUEST_DURATION = Histogram(
    "nexus_db_request_duration_milliseconds",
    "The database transaction duration.",
    ["db", "method"],
    buckets=(1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000),
)

REDIS_ESTABLISHED = Gauge(
    "nexus_redis_connections_established",
    "The current number of established Redis connections.",
    multiprocess_mode="livesum",
)
REDIS_RECONNECTING = Gauge(
    "nexus_redis_connections_reconnecting",
    "The current number of reconnecting Redis connections.",
    multiprocess_mode="livesum",
)
REDIS_READY = Gauge(
    "nexus_redis_connections_ready",
    "The current number of ready Redis connections.",
    multiprocess_mode="livesum",
)
REDIS_DURATION_UNTIL_READY = Histogram(
    "nexus_redis_duration_until_ready",
    "The duration until Redis reaches the ready state (seconds).",
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
REDIS_ERRORS = Counter("nexus_redis_errors", "The total number of Redis connection errors.")

#: SQL commands counted by ``nexus_db_success_total{command}``; anything else is "other".
DB_COMMANDS = ("select", "insert", "update", "delete", "ddl", "transaction", "other")
#: Values of ``nexus_db_request_duration_milliseconds{method}``.
DB_METHODS = (
    "fetch_one", "fetch_all", "iterate", "fetch_val", "execute", "execute_many", "transaction"
)


class DbMetrics:
    """The label children of one ``db`` value, resolved once."""

    def __init__(self, db: str) -> None:
        self.db = db
        self.connect = buffered(DB_CONNECT.labels(db=db))
        self.disconnect = buffered(DB_DISCONNECT.labels(db=db))
        self.request = buffered(DB_REQUEST.labels(db=db))
        self.success = {
            cmd: buffered(DB_SUCCESS.labels(db=db, command=cmd)) for cmd in DB_COMMANDS
        }
        self.duration = {m: DB_REQUEST_DURATION.labels(db=db, method=m) for m in DB_METHODS}
        self._errors: dict[str, Counter] = {}

    def error(self, code: str) -> None:
        child = self._errors.get(code)
        if child is None:
            child = self._errors[code] = DB_ERRORS.labels(db=self.db, code=code)
        child.inc()
