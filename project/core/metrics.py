"""Prometheus metrics: what every agent process counts, and what Redis knows cluster-wide.

Two kinds of figures:

* **Process counters and histograms** (``agents_envelopes_*``, ``agents_hop_seconds``,
  ``agents_lease_failures_total``, ``agents_shared_state_conflicts_total``,
  ``agents_redis_write_errors_total``), counted
  where things happen. Celery's prefork pool runs tasks in child processes, so these
  use prometheus-client's *multiprocess mode* when ``PROMETHEUS_MULTIPROC_DIR`` is set
  in the environment of the process (before it starts): every process, parent and pool
  children, writes its values to files in that folder, and the endpoint sums the files.
  Without it only the serving process's own values are visible, which is wrong for a
  prefork worker. Give each service its own folder (compose and
  :class:`~project.local.deployment.LocalDeployment` do) and keep it for the service's life:
  counters of exited processes stay in their files, so totals never go backwards.
* **Cluster figures read from Redis at scrape time** (:class:`RedisStateCollector`):
  jobs by status, open jobs, re-routes, redeliveries, refusals as recorded in Redis,
  registered agents, and the depth of every queue, including each worker queue's
  priority sub-lists (``worker.<id>:3`` ...). Only processes of the coordinator tier
  and the one-shot ``agents metrics`` server export them, so that summing across
  scrape targets does not multiply them.

The endpoint: ``AGENTS_METRICS_PORT`` makes every coordinator, distributor and worker
process serve ``/metrics`` on that port (:func:`start_agent_metrics`, called by the
lifecycle bootstep); ``agents metrics --port`` serves the same figures on demand.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

log = logging.getLogger("project.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus-client's own variable: the folder of this service's metric files."""

# prometheus-client opens its files there as soon as a labelled value is first used.
if os.environ.get(MULTIPROC_ENV):
    os.makedirs(os.environ[MULTIPROC_ENV], exist_ok=True)

_HOP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

ENVELOPES_SIGNED = Counter(
    "agents_envelopes_signed", "A2A envelopes signed, by message type.", ["type"]
)
ENVELOPES_VERIFIED = Counter(
    "agents_envelopes_verified",
    "A2A envelopes whose shape, key, signature and expiry checked out, by message type.",
    ["type"],
)
ENVELOPES_READMITTED = Counter(
    "agents_envelopes_readmitted",
    "Authentic envelopes that expired in a queue while their job still waited for them.",
)
ENVELOPES_REFUSED = Counter(
    "agents_envelopes_refused",
    "A2A envelopes refused by a task (they never ran), by reason and task.",
    ["reason", "task"],
)
SHARED_STATE_CONFLICTS = Counter(
    "agents_shared_state_conflicts",
    "Optimistic shared-state writes that lost to a concurrent writer and were retried.",
    ["tier"],
)
LEASE_FAILURES = Counter(
    "agents_lease_failures",
    "Lease operations that failed: acquire (held by another), renew or release "
    "(lease lost), fence (stale fencing token).",
    ["lease", "op"],
)
REDIS_WRITE_ERRORS = Counter(
    "agents_redis_write_errors",
    "Writes Redis refused (out of memory at maxmemory, read-only replica, cannot persist), "
    "by tier and operation. Each is waited out and retried, not given up.",
    ["tier", "op"],
)
HOP_SECONDS = Histogram(
    "agents_hop_seconds",
    "Time one tier took to handle one message (its verify -> decide -> act -> report graph).",
    ["tier", "task", "outcome"],
    buckets=_HOP_BUCKETS,
)


def count_signed(message_type: str) -> None:
    """Count one envelope signed."""
    ENVELOPES_SIGNED.labels(message_type).inc()


def count_verified(message_type: str) -> None:
    """Count one envelope verified."""
    ENVELOPES_VERIFIED.labels(message_type).inc()


def count_readmitted() -> None:
    """Count one expired envelope a hop still acted on (its job waited for it)."""
    ENVELOPES_READMITTED.inc()


def count_refused(reason: str, task: str) -> None:
    """Count one envelope refused by ``task``."""
    ENVELOPES_REFUSED.labels(reason, task).inc()


def count_conflict(tier: str) -> None:
    """Count one lost optimistic write to shared state (call it once per retry)."""
    SHARED_STATE_CONFLICTS.labels(tier).inc()


def count_lease_failure(lease: str, op: str) -> None:
    """Count one failed lease operation (``acquire``, ``renew``, ``release``, ``fence``)."""
    LEASE_FAILURES.labels(lease, op).inc()


def count_write_error(tier: str, op: str) -> None:
    """Count one write Redis refused (``op``: what the write was for)."""
    REDIS_WRITE_ERRORS.labels(tier, op).inc()


def observe_hop(graph_name: str, seconds: float, outcome: str) -> None:
    """Record how long one hop took; ``graph_name`` is ``<tier>.<task>``."""
    tier = graph_name.split(".", 1)[0]
    HOP_SECONDS.labels(tier, graph_name, outcome).observe(seconds)


# --- collectors -------------------------------------------------------------------


class MultiProcessFilesCollector(Collector):
    """Sums the metric files of one or more multiprocess folders.

    One folder is what ``PROMETHEUS_MULTIPROC_DIR`` names; several let one endpoint
    show every service of a local deployment (process ids are unique on one host).
    """

    def __init__(self, directories: Sequence[str | os.PathLike[str]]) -> None:
        self._directories = [os.fspath(d) for d in directories]

    def collect(self) -> Iterable[Any]:
        files: list[str] = []
        for directory in self._directories:
            files += glob.glob(os.path.join(directory, "*.db"))
        merged: Iterable[Any] = MultiProcessCollector.merge(  # type: ignore[no-untyped-call]
            files, accumulate=True
        )
        return merged


class _DefaultRegistryCollector(Collector):
    """This process's own metrics (no multiprocess folder)."""

    def collect(self) -> Iterable[Any]:
        return REGISTRY.collect()


class RedisStateCollector(Collector):
    """Cluster-wide figures, read from Redis in one round trip per scrape.

    A scrape while Redis is down reports ``agents_redis_up 0`` instead of failing.
    """

    def __init__(self, redis: Any) -> None:
        self._redis = redis

    def collect(self) -> Iterator[Any]:
        # Imported here: core.models and constants are cheap, but metrics must stay
        # importable from the envelope module without cycles.
        from project.core.celery_app.broker_keys import broker_keys
        from project.core.constants import (
            COORDINATOR_QUEUE,
            DISTRIBUTOR_QUEUE,
            KEY_AGENT_CARDS,
            KEY_AGENT_DEAD,
            KEY_JOBS_COUNT,
            KEY_JOBS_OPEN,
            KEY_SHARED_STATS,
            KEY_STATS_JOBS,
            KEY_STATS_REFUSED,
            worker_queue,
        )

        up = GaugeMetricFamily("agents_redis_up", "1 if Redis answered the scrape's reads.")
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.hgetall(KEY_JOBS_COUNT)
            pipe.zcard(KEY_JOBS_OPEN)
            pipe.hgetall(KEY_STATS_JOBS)
            pipe.hgetall(KEY_STATS_REFUSED)
            pipe.hgetall(KEY_AGENT_CARDS)
            pipe.smembers(KEY_AGENT_DEAD)
            pipe.hgetall(KEY_SHARED_STATS)
            counts, open_jobs, stats, refused, cards_raw, dead, shared = pipe.execute()
            cards = {agent: json.loads(raw) for agent, raw in cards_raw.items()}
            worker_ids = sorted(
                str(c.get("id", agent)) for agent, c in cards.items() if c.get("tier") == "worker"
            )
            queues = [COORDINATOR_QUEUE, DISTRIBUTOR_QUEUE] + [worker_queue(w) for w in worker_ids]
            keys = broker_keys()
            lists = [
                (queue, step, keys.priority_list(queue, step))
                for queue in queues
                for step in keys.priority_steps
            ]
            pipe = self._redis.pipeline(transaction=False)
            for _, _, name in lists:
                pipe.llen(name)
            depths = pipe.execute()
        except Exception as exc:  # a scrape must answer even when Redis does not
            log.warning("metrics: could not read Redis: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up

        jobs = CounterMetricFamily(
            "agents_jobs",
            "Jobs created (PENDING) and finished, by final status (cluster-wide).",
            labels=["status"],
        )
        for status, n in sorted(counts.items()):
            jobs.add_metric([status], float(n))
        yield jobs
        yield GaugeMetricFamily("agents_jobs_open", "Jobs not yet finished.", value=open_jobs)

        reroutes = CounterMetricFamily(
            "agents_reroutes",
            "Jobs re-dispatched by the health check: reroute (dead worker) or stuck (never "
            "dispatched).",
            labels=["reason"],
        )
        reroutes.add_metric(["reroute"], float(stats.get("rerouted", 0)))
        reroutes.add_metric(["stuck"], float(stats.get("resent_stuck", 0)))
        yield reroutes
        yield CounterMetricFamily(
            "agents_handler_executions",
            "Handler runs started by workers (cluster-wide).",
            value=float(stats.get("handler_executions", 0)),
        )
        yield CounterMetricFamily(
            "agents_redeliveries",
            "Work orders run again after their worker died mid-way (cluster-wide).",
            value=float(stats.get("redeliveries", 0)),
        )
        yield CounterMetricFamily(
            "agents_shared_state_conflicts_recorded",
            "Lost optimistic shared-state writes as recorded in Redis by every writer.",
            value=float(shared.get("conflicts", 0)),
        )
        recorded = CounterMetricFamily(
            "agents_refusals_recorded",
            "Refused envelopes as recorded in Redis by every process, by reason.",
            labels=["reason"],
        )
        for reason, n in sorted(refused.items()):
            recorded.add_metric([reason], float(n))
        yield recorded

        agents = GaugeMetricFamily(
            "agents_registered", "Registered agents by tier and state.", labels=["tier", "state"]
        )
        tally: dict[tuple[str, str], int] = {}
        for agent, card in cards.items():
            key = (str(card.get("tier", "?")), "dead" if agent in dead else "registered")
            tally[key] = tally.get(key, 0) + 1
        for (tier, state), n in sorted(tally.items()):
            agents.add_metric([tier, state], n)
        yield agents

        depth = GaugeMetricFamily(
            "agents_queue_depth",
            "Messages waiting in a queue, per priority sub-list (0 is the base list).",
            labels=["queue", "priority"],
        )
        for (queue, step, _), n in zip(lists, depths, strict=True):
            depth.add_metric([queue, str(step)], int(n))
        yield depth


def metrics_registry(
    *,
    redis: Any = None,
    multiproc_dirs: Sequence[str | os.PathLike[str]] | None = None,
) -> CollectorRegistry:
    """The registry an endpoint serves.

    Process metrics come from ``multiproc_dirs`` if given, else from
    ``PROMETHEUS_MULTIPROC_DIR`` if set, else from this process alone. With ``redis``,
    the cluster figures of :class:`RedisStateCollector` are added.
    """
    registry = CollectorRegistry(auto_describe=False)
    env_dir = os.environ.get(MULTIPROC_ENV)
    dirs = list(multiproc_dirs) if multiproc_dirs else ([env_dir] if env_dir else [])
    if dirs:
        registry.register(MultiProcessFilesCollector(dirs))
    else:
        registry.register(_DefaultRegistryCollector())
    if redis is not None:
        registry.register(RedisStateCollector(redis))
    return registry


def serve_metrics(
    port: int,
    *,
    addr: str = "0.0.0.0",
    redis: Any = None,
    multiproc_dirs: Sequence[str | os.PathLike[str]] | None = None,
) -> tuple[Any, threading.Thread]:
    """Serve ``/metrics`` on a daemon thread. Returns (server, thread); ``server.shutdown()``
    stops it."""
    registry = metrics_registry(redis=redis, multiproc_dirs=multiproc_dirs)
    server, thread = start_http_server(port, addr=addr, registry=registry)
    return server, thread


def scrape_client(url: str) -> Any:
    """A Redis client for scrapes: fails in seconds, so a scrape never hangs on an outage."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from project.core.state.connections import client_from_url

    return client_from_url(
        url,
        socket_connect_timeout=2,
        socket_timeout=5,
        retry=Retry(NoBackoff(), 1),
    )


_agent_server_lock = threading.Lock()
_agent_server: Any = None


def start_agent_metrics(port: int | None, *, redis_url: str | None = None) -> bool:
    """Start this agent process's endpoint once (later calls do nothing).

    With ``redis_url`` the cluster figures of :class:`RedisStateCollector` are served
    too. Returns True if this call started it. A port already in use is logged, not
    raised: metrics must never keep an agent from working.
    """
    global _agent_server
    if port is None:
        return False
    with _agent_server_lock:
        if _agent_server is not None:
            return False
        if not os.environ.get(MULTIPROC_ENV):
            log.warning(
                "metrics: %s is not set; a prefork worker's pool processes are not counted",
                MULTIPROC_ENV,
            )
        try:
            redis = scrape_client(redis_url) if redis_url else None
            _agent_server, _ = serve_metrics(port, redis=redis)
        except OSError as exc:
            log.error("metrics: cannot serve on port %s: %s", port, exc)
            return False
    log.info("metrics: serving /metrics on port %s", port)
    return True
