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
from dataclasses import dataclass, field
from functools import cached_property

from redis import Redis

from project.core import metrics
from project.core.constants import (
    COORDINATOR,
    COORDINATOR_QUEUE,
    DISTRIBUTOR,
    DISTRIBUTOR_QUEUE,
    WORKER_QUEUE_PREFIX,
)
from project.core.envelope import Envelope, Keyring, MessageType, Signer, verify
from project.core.errors import A2AError, ConfigurationError, MisdirectedEnvelopeError
from project.core.jobs import JobStore
from project.core.models import LocalAgentState
from project.core.redis_store import connect_redis
from project.core.registry import AgentRegistry
from project.core.replay import ReplayGuard
from project.core.settings import Settings, get_settings
from project.core.shared_state import SharedStateStore

log = logging.getLogger("project")

KEY_REFUSED = "stats:a2a:refused"


@dataclass(frozen=True)
class AgentIdentity:
    """Which tiers a process serves and, for a worker, its id."""

    tiers: frozenset[str]
    agent_id: str
    worker_id: str | None = None

    @classmethod
    def resolve(cls, hostname: str, queues: list[str], settings: Settings) -> AgentIdentity:
        """Derive the identity from the consumed queues and the node name (``w1@host``).

        Raises:
            ConfigurationError: a process consumes more than one worker queue.
        """
        tiers: set[str] = set()
        worker_ids = [
            q[len(WORKER_QUEUE_PREFIX) :] for q in queues if q.startswith(WORKER_QUEUE_PREFIX)
        ]
        if len(worker_ids) > 1:
            raise ConfigurationError(f"one worker consumes one worker queue, got {worker_ids}")
        if COORDINATOR_QUEUE in queues:
            tiers.add(COORDINATOR)
        if DISTRIBUTOR_QUEUE in queues:
            tiers.add(DISTRIBUTOR)
        worker_id = settings.worker_id or (worker_ids[0] if worker_ids else None)
        if worker_id is not None:
            tiers.add("worker")
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
    def replay(self) -> ReplayGuard:
        """Replay protection."""
        return ReplayGuard(self.redis)

    @cached_property
    def jobs(self) -> JobStore:
        """Job records."""
        return JobStore(self.redis, result_ttl_s=self.settings.result_ttl_s)

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

    def receive(self, raw: object, *, expected: MessageType, recipient: str) -> Envelope:
        """Accept an envelope for this agent: verify it, check its address, claim it.

        Raises:
            A2AError: malformed, unknown key, bad signature, expired, replayed, or
                (MisdirectedEnvelopeError) not a ``expected`` for ``recipient``.
        """
        envelope = verify(raw, self.keyring, max_bytes=self.settings.max_payload_bytes)
        if envelope.type is not expected or envelope.recipient != recipient:
            raise MisdirectedEnvelopeError(
                f"{recipient!r} expected a {expected.value}, "
                f"got a {envelope.type.value} for {envelope.recipient!r}"
            )
        self.replay.claim(envelope)
        return envelope

    def count_refusal(self, error: A2AError, task_name: str) -> None:
        """Count and log an envelope refused by a task. Never raises."""
        log.warning(
            "refused envelope",
            extra={"reason": error.reason, "task": task_name, "error": str(error)},
        )
        metrics.count_refused(error.reason, task_name)
        try:
            self.redis.hincrby(KEY_REFUSED, error.reason, 1)
        except Exception:  # counting must not hide the refusal itself
            log.exception("could not count a refused envelope")


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
