"""What one agent process runs with: settings, Redis, keys, identity.

Built once per process (lazily, on first use) and shared by that process's
tasks. Celery worker processes resolve their identity (which tier, which
worker id) from the queues they consume, at ``worker_init``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Generic, TypeVar

from redis import Redis

from project.core import metrics
from project.core.a2a.envelope import Envelope, Keyring, MessageType, Signer, verify
from project.core.constants import (
    COORDINATOR_QUEUE,
    DISTRIBUTOR_QUEUE,
    KEY_STATS_REFUSED,
    WORKER_QUEUE_PREFIX,
    Tier,
)
from project.core.errors import (
    A2AError,
    ConfigurationError,
    LapsedEnvelopeError,
    MisdirectedEnvelopeError,
    ReplayError,
)
from project.core.models import AgentCard, LocalAgentState
from project.core.settings import Settings, get_settings
from project.core.state.connections import connect_redis
from project.core.state.joblog import JobLog
from project.core.state.jobs import JobStore
from project.core.state.registry import AgentRegistry
from project.core.state.shared import SharedStateStore

log = logging.getLogger("project")

T = TypeVar("T")

OFFERED_TASK_TYPES_CACHE_S = 1.0
"""How long the coordinator trusts its list of task types some worker offers."""
LIVE_WORKERS_CACHE_S = 0.5
"""How long the distributor trusts its list of live worker cards."""
WORKER_LOADS_CACHE_S = 0.25
"""How long the distributor trusts the open-job counts of the live workers."""


class TimedCache(Generic[T]):
    """A value read from Redis at most every ``ttl_s`` seconds, shared by a process's threads.

    ``get(fresh=True)`` reads it now: a caller that found the cached value wanting
    (no worker offers the task type, say) asks again before it refuses.
    """

    def __init__(self, read: Callable[[], T], ttl_s: float) -> None:
        self._read = read
        self._ttl_s = ttl_s
        self._lock = threading.Lock()
        self._value: T | None = None
        self._read_at = 0.0

    def get(self, *, fresh: bool = False) -> T:
        """The cached value, read again if it is older than ``ttl_s`` or ``fresh``."""
        with self._lock:
            if fresh or self._value is None or time.monotonic() - self._read_at > self._ttl_s:
                self._value = self._read()
                self._read_at = time.monotonic()
            return self._value


@dataclass(frozen=True)
class AgentIdentity:
    """Which tiers a process serves and, for a worker, its id."""

    tiers: frozenset[Tier]
    agent_id: str
    worker_id: str | None = None

    @classmethod
    def resolve(cls, hostname: str, queues: list[str], settings: Settings) -> AgentIdentity:
        """Derive the identity from the consumed queues and the node name (``w1@host``).

        Raises:
            ConfigurationError: a process consumes more than one worker queue.
        """
        tiers: set[Tier] = set()
        worker_ids = [
            q[len(WORKER_QUEUE_PREFIX) :] for q in queues if q.startswith(WORKER_QUEUE_PREFIX)
        ]
        if len(worker_ids) > 1:
            raise ConfigurationError(f"one worker consumes one worker queue, got {worker_ids}")
        if COORDINATOR_QUEUE in queues:
            tiers.add(Tier.COORDINATOR)
        if DISTRIBUTOR_QUEUE in queues:
            tiers.add(Tier.DISTRIBUTOR)
        worker_id = settings.worker_id or (worker_ids[0] if worker_ids else None)
        if worker_id is not None:
            tiers.add(Tier.WORKER)
        node = hostname or f"{socket.gethostname()}-{os.getpid()}"
        return cls(frozenset(tiers), agent_id=worker_id or node, worker_id=worker_id)


@dataclass
class Runtime:
    """Per-process dependencies of the agents. Thread-safe to share."""

    settings: Settings
    identity: AgentIdentity = field(
        default_factory=lambda: AgentIdentity(frozenset(), f"{socket.gethostname()}-{os.getpid()}")
    )

    @cached_property
    def redis(self) -> Redis:
        """The shared-state store."""
        return connect_redis(self.settings.redis_url)

    @cached_property
    def keyring(self) -> Keyring:
        """A2A keys (raises ConfigurationError if unsafe)."""
        return Keyring.from_settings(self.settings)

    @cached_property
    def signer(self) -> Signer:
        """Signs this process's envelopes."""
        return Signer(self.keyring, ttl_s=self.settings.envelope_ttl_s)

    @cached_property
    def jobs(self) -> JobStore:
        """Job records."""
        return JobStore(
            self.redis,
            result_ttl_s=self.settings.result_ttl_s,
            log_cap=self.settings.job_log_max_events,
        )

    @cached_property
    def joblog(self) -> JobLog:
        """The jobs' event logs."""
        return JobLog(self.redis, cap=self.settings.job_log_max_events)

    @cached_property
    def registry(self) -> AgentRegistry:
        """Agent cards and heartbeats."""
        return AgentRegistry(self.redis)

    @cached_property
    def shared_state(self) -> SharedStateStore:
        """Distributors' shared state, written optimistically."""
        return SharedStateStore(self.redis)

    @cached_property
    def local_state(self) -> LocalAgentState:
        """This agent's local state."""
        tier = ",".join(sorted(self.identity.tiers)) or "client"
        return LocalAgentState(agent_id=self.identity.agent_id, tier=tier)

    @cached_property
    def offered_task_types(self) -> TimedCache[frozenset[str]]:
        """Task types some registered worker offers (the coordinator's intake check)."""

        def read() -> frozenset[str]:
            cards = self.registry.cards().values()
            return frozenset(t for c in cards if c.tier == Tier.WORKER for t in c.task_types)

        return TimedCache(read, OFFERED_TASK_TYPES_CACHE_S)

    @cached_property
    def live_workers(self) -> TimedCache[list[AgentCard]]:
        """Cards of the live workers (the distributor's routing candidates)."""
        return TimedCache(
            lambda: self.registry.live_workers(self.settings.heartbeat_timeout_s),
            LIVE_WORKERS_CACHE_S,
        )

    @cached_property
    def worker_loads(self) -> TimedCache[dict[str, int]]:
        """Open jobs per live worker (least-busy routing), counted up locally between reads."""
        return TimedCache(
            lambda: self.registry.loads([c.id for c in self.live_workers.get()]),
            WORKER_LOADS_CACHE_S,
        )

    def reply(
        self, cause: Envelope, kind: MessageType, payload: dict[str, Any], *, recipient: str
    ) -> Envelope:
        """Sign this agent's ``kind`` reply to ``cause`` for ``recipient`` (same causal chain)."""
        return self.signer.reply(
            cause, kind, payload, sender=self.identity.agent_id, recipient=recipient
        )

    def receive(self, raw: object, *, expected: MessageType, recipient: str) -> Envelope:
        """Accept an envelope for this agent: verify it and check its address.

        Replays are refused by the hop itself, from the job record it moves anyway
        (see :func:`replay_of`): a copy of a message for a job that is already
        final raises ReplayError.

        Raises:
            A2AError: malformed, unknown key, bad signature, expired, or
                (MisdirectedEnvelopeError) not a ``expected`` for ``recipient``.
                LapsedEnvelopeError (an ExpiredEnvelopeError) is an authentic,
                well-addressed envelope that expired: see :func:`project.core.hops.readmit`.
        """
        try:
            envelope = verify(
                raw,
                self.keyring,
                max_bytes=self.settings.max_payload_bytes,
                skew_ms=int(self.settings.envelope_clock_skew_s * 1000),
            )
        except LapsedEnvelopeError as lapsed:
            # Authentic but expired: misdirected first; the hop decides on the rest.
            if lapsed.envelope is not None:
                self._check_address(lapsed.envelope, expected, recipient)
            raise
        self._check_address(envelope, expected, recipient)
        return envelope

    @staticmethod
    def _check_address(envelope: Envelope, expected: MessageType, recipient: str) -> None:
        if envelope.type is not expected or envelope.recipient != recipient:
            raise MisdirectedEnvelopeError(
                f"{recipient!r} expected a {expected.value}, "
                f"got a {envelope.type.value} for {envelope.recipient!r}"
            )

    def count_refusal(self, error: A2AError, task_name: str) -> None:
        """Count and log an envelope refused by a task. Never raises."""
        log.warning(
            "refused envelope",
            extra={"reason": error.reason, "task": task_name, "error": str(error)},
        )
        metrics.count_refused(error.reason, task_name)
        try:
            self.redis.hincrby(KEY_STATS_REFUSED, error.reason, 1)
        except Exception:  # counting must not hide the refusal itself
            log.exception("could not count a refused envelope")


def replay_of(envelope: Envelope, job_id: str, status: str) -> ReplayError:
    """The error for a copy of a message about a job that is already final.

    The replay rule: a message whose job is final has had every effect it can
    have, so a copy of it is a replay and is refused; a copy of a message whose
    job is unfinished is a genuine redelivery (its process died mid-way) and runs,
    while the job's epoch compare-and-set keeps its result to one. No marker per
    message is needed: the job record the hop reads anyway decides.
    """
    return ReplayError(
        f"envelope {envelope.id} is about job {job_id}, already {status}: a replay or a late copy"
    )


_lock = threading.Lock()
_runtime: Runtime | None = None


def get_runtime() -> Runtime:
    """The process's runtime, built on first use."""
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = Runtime(get_settings())
        return _runtime


def init_runtime(hostname: str, queues: list[str]) -> Runtime:
    """Build the runtime of a Celery worker process and check its keys.

    Raises:
        ConfigurationError: unsafe or missing A2A keys, or a bad identity.
    """
    global _runtime
    settings = get_settings()
    identity = AgentIdentity.resolve(hostname, queues, settings)
    runtime = Runtime(settings, identity)
    _ = runtime.keyring  # refuse to start with missing or short keys
    with _lock:
        _runtime = runtime
    return runtime


def reset_runtime() -> None:
    """Forget the runtime and settings (tests that change the environment use it)."""
    global _runtime
    with _lock:
        _runtime = None
    get_settings.cache_clear()
