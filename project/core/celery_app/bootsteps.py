"""Agent lifecycle inside a Celery worker: register a card, heartbeat, say goodbye.

Each tier adds one :class:`AgentStep` subclass to ``app.steps["worker"]``. The heartbeat runs
on its own thread in the worker's main process, so it needs no beat and keeps
going while tasks run; a Redis outage is logged and ridden out. A tier adds
behaviour of its own through :class:`AgentHooks`.

A Redis that refuses writes (full, read-only) degrades an agent; it does not end
it. The heartbeat still goes through (see :mod:`project.core.state.registry`) and
marks the agent degraded; periodic writes that fail back off (doubling their
interval up to :data:`MAX_BACKOFF_S`); and a prefork pool child, where tasks run,
waits refused writes out in place (:func:`~project.core.state.connections.ride_out`),
so each task finishes, and acknowledges its message, once Redis takes writes again.

Local state is a LangGraph thread per process, checkpointed in Redis
(:mod:`project.core.state.agent_state`): each process restores it when it starts and
checkpoints it whenever it changed,
the main process on every heartbeat and each prefork pool child (where tasks
run and record into a state of their own) on a timer of the same interval.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar, Final, Self

from celery import bootsteps
from celery.signals import worker_process_init, worker_process_shutdown
from celery.utils.log import current_process_index

from project.core.a2a.envelope import now_ms
from project.core.constants import Tier
from project.core.metrics import start_agent_metrics
from project.core.models import AgentCard, AgentStatus, LocalAgentState, Skill
from project.core.runtime import Runtime, get_runtime
from project.core.state.agent_state import AgentStateKeeper, agent_thread_id
from project.core.state.connections import (
    WriteOp,
    is_write_refused,
    last_write_refusal_age_s,
    note_write_refusal,
    ride_out_writes,
    write_refusal,
)
from project.core.state.registry import DEGRADED_FOR_S

log = logging.getLogger("project.lifecycle")

MAX_BACKOFF_S: Final = 30.0
"""The longest a failing periodic write (a checkpoint, a heartbeat hook) waits to try again."""

try:
    VERSION = importlib.metadata.version("agents-celery")
except importlib.metadata.PackageNotFoundError:  # running from a source tree
    VERSION = "0.0.0"


class Backoff:
    """When a failing periodic action may run again: its interval, doubled per failure."""

    def __init__(self, interval_s: float, max_s: float = MAX_BACKOFF_S) -> None:
        self._interval_s = interval_s
        self._max_s = max(interval_s, max_s)
        self._failures = 0

    def delay_s(self) -> float:
        """The wait before the next try (the interval itself while nothing fails)."""
        if not self._failures:
            return self._interval_s
        ceiling = min(self._max_s, self._interval_s * 2.0 ** min(self._failures, 16))
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def failed(self) -> None:
        """Note one failure (the next wait doubles)."""
        self._failures += 1

    def succeeded(self) -> None:
        """Back to the plain interval."""
        self._failures = 0


def _log_failure(what: str, error: Exception, op: WriteOp, **extra: Any) -> None:
    """A refused write is counted and logged briefly; anything else with its traceback."""
    if is_write_refused(error):
        note_write_refusal(op, error)
    else:
        log.warning("%s failed; retrying", what, exc_info=error, extra=extra)


class PeriodicThread:
    """Runs ``tick`` every ``interval_s`` on a daemon thread; its errors are logged.

    A tick that fails (a Redis outage, a Redis that refuses writes) is retried with
    backoff: the interval doubles per failure in a row, up to :data:`MAX_BACKOFF_S`.
    """

    def __init__(self, name: str, interval_s: float) -> None:
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def tick(self) -> None:
        """One round of work; subclasses override it."""

    def start(self) -> Self:
        """Start ticking."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop ticking and wait for the thread."""
        self._stop.set()
        self._thread.join(timeout=self._interval_s + 5)

    def _run(self) -> None:
        # A timer fails fast where tasks ride refused writes out (a pool child): it
        # backs off instead, and must never hold up the child's exit.
        ride_out_writes(False, this_thread=True)
        backoff = Backoff(self._interval_s)
        while not self._stop.wait(backoff.delay_s()):
            try:
                self.tick()
                backoff.succeeded()
            except Exception as error:
                backoff.failed()
                _log_failure(self._thread.name, error, WriteOp.TIMER)


class Heartbeat(PeriodicThread):
    """Writes an agent's heartbeat every ``interval_s`` on a daemon thread.

    The beat itself keeps its interval (it goes through even while Redis is full)
    and marks the agent degraded while its writes are refused. ``on_beat`` runs
    after each beat, on the same thread; while it fails it backs off.
    """

    def __init__(
        self,
        runtime: Runtime,
        agent_id: str,
        interval_s: float,
        on_beat: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(f"heartbeat-{agent_id}", interval_s)
        self._runtime = runtime
        self._agent_id = agent_id
        self._on_beat = on_beat
        self._hook_backoff = Backoff(interval_s)
        self._hook_due = 0.0
        self._last_error = ""

    def tick(self) -> None:
        """Beat, then run the hook if it is due, each failure logged on its own."""
        try:
            self._beat()
        except Exception as error:
            if write_refusal(error):
                self._last_error = str(error)
            _log_failure("heartbeat", error, WriteOp.HEARTBEAT, agent_id=self._agent_id)
        if self._on_beat is None or time.monotonic() < self._hook_due:
            return
        try:
            self._on_beat()
            self._hook_backoff.succeeded()
        except Exception as error:
            self._hook_backoff.failed()
            if write_refusal(error):
                self._last_error = str(error)
            _log_failure("heartbeat hook", error, WriteOp.TIMER, agent_id=self._agent_id)
        self._hook_due = time.monotonic() + self._hook_backoff.delay_s() - self._interval_s

    def _beat(self) -> None:
        age = last_write_refusal_age_s()
        recent = age is not None and age <= DEGRADED_FOR_S
        beat = self._runtime.registry.beat(
            self._agent_id,
            refused_ago_s=age if recent else None,
            refused_error=(self._last_error or "a write was refused") if recent else "",
        )
        if beat.readmitted:
            log.warning(
                "agent re-admitted after being marked dead", extra={"agent_id": self._agent_id}
            )
        if beat.refused:
            self._last_error = beat.refused
            note_write_refusal(WriteOp.HEARTBEAT, beat.refused)


class AgentHooks:
    """A tier's extension points in its agent's lifecycle. Each does nothing by default.

    They run in the Celery worker's main process. An exception in ``after_start``
    stops the worker from starting; in the others it is logged and ridden out.
    """

    def after_start(self, runtime: Runtime, card: AgentCard) -> None:
        """After the agent registered, before its first heartbeat."""

    def on_heartbeat(self, runtime: Runtime, card: AgentCard) -> None:
        """After each heartbeat, on the heartbeat thread."""

    def before_stop(self, runtime: Runtime, card: AgentCard) -> None:
        """At warm shutdown, after the last heartbeat and before the agent deregisters."""


_keeper_lock = threading.Lock()
_keeper: AgentStateKeeper | None = None


def state_keeper(runtime: Runtime) -> AgentStateKeeper:
    """The local-state keeper of this process (main process or one pool child)."""
    global _keeper
    with _keeper_lock:
        if _keeper is None:
            thread_id = agent_thread_id(runtime.identity.agent_id, current_process_index(base=0))
            _keeper = AgentStateKeeper(runtime.redis, thread_id)
        return _keeper


def restore_local_state(runtime: Runtime) -> bool:
    """Replace the process's local state by its last checkpoint, once. True if restored."""
    try:
        state = state_keeper(runtime).restore()
    except Exception:  # a fresh state is better than no agent
        log.warning("could not restore the local state", exc_info=True)
        return False
    if state is None:
        return False
    # Whatever the previous process was doing died with it: it recovers, then idles.
    state.status = AgentStatus.RECOVERING
    if state.local_tasks:
        state.record({"event": "lost_on_restart", "jobs": sorted(state.local_tasks)})
        state.local_tasks.clear()
    runtime.local_state = state
    log.info("local state restored", extra={"agent_thread": state_keeper(runtime).thread_id})
    return True


def save_local_state(runtime: Runtime) -> bool:
    """Save the process's local state if it changed since the last save."""
    return state_keeper(runtime).save_if_changed(runtime.local_state)


class AgentStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """A worker bootstep that makes the process one tier's agent.

    On start it restores the process's local state, registers the card
    from :meth:`build_card`, and heartbeats on its own thread (saving the local
    state with each beat); on stop it deregisters. A tier subclasses it, sets
    :attr:`tier` and :attr:`hooks`, and adds it to ``app.steps["worker"]``. It is
    included only in a process that serves its tier (``include_if``).
    """

    requires: ClassVar[tuple[str, ...]] = ("celery.worker.components:Pool",)
    tier: ClassVar[Tier]
    hooks: ClassVar[AgentHooks] = AgentHooks()

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.heartbeat: Heartbeat | None = None
        self.card: AgentCard | None = None

    def include_if(self, worker: Any) -> bool:
        """Only in a process that serves this step's tier."""
        return self.tier in get_runtime().identity.tiers

    def build_card(self, runtime: Runtime, worker: Any) -> AgentCard:
        """This agent's card; every tier overrides it."""
        raise NotImplementedError

    def start(self, worker: Any) -> None:
        """Register, start heartbeating, serve metrics."""
        runtime = get_runtime()
        restore_local_state(runtime)
        self.card = card = self.build_card(runtime, worker)
        runtime.registry.register(card)
        runtime.local_state.status = AgentStatus.IDLE
        self.hooks.after_start(runtime, card)

        def on_beat() -> None:
            save_local_state(runtime)
            self.hooks.on_heartbeat(runtime, card)

        self.heartbeat = Heartbeat(
            runtime, card.id, runtime.settings.heartbeat_interval_s, on_beat
        ).start()
        log.info("agent registered", extra={"agent_id": card.id, "tier": self.tier})
        # Once per process; cluster figures from Redis only where the coordinator runs.
        start_agent_metrics(
            runtime.settings.metrics_port,
            redis_url=(
                runtime.settings.redis_url if Tier.COORDINATOR in runtime.identity.tiers else None
            ),
        )

    def stop(self, worker: Any) -> None:
        """Stop heartbeating, save the local state, deregister."""
        if self.heartbeat is None or self.card is None:
            return
        self.heartbeat.stop()
        runtime = get_runtime()
        try:
            self.hooks.before_stop(runtime, self.card)
        except Exception:
            log.warning("lifecycle hook failed at stop", exc_info=True)
        try:
            save_local_state(runtime)
        except Exception:
            log.warning("could not checkpoint the local state", exc_info=True)
        try:
            runtime.registry.deregister(self.card.id)
            log.info("agent deregistered", extra={"agent_id": self.card.id, "tier": self.tier})
        except Exception:
            log.warning("could not deregister", exc_info=True)


class TierAgentStep(AgentStep):
    """The agent of a tier that serves one shared queue (coordinator, distributor).

    A subclass declares its :attr:`queue`, :attr:`description` and :attr:`skill`.
    """

    queue: ClassVar[str]
    description: ClassVar[str]
    skill: ClassVar[Skill]

    def build_card(self, runtime: Runtime, worker: Any) -> AgentCard:
        """The card: this process's agent id, its one skill, the shared queue."""
        agent_id = runtime.identity.agent_id
        return AgentCard(
            name=agent_id,
            description=self.description,
            version=VERSION,
            url=f"celery://{self.queue}",
            skills=[self.skill],
            id=agent_id,
            tier=self.tier,
            queue=self.queue,
            concurrency=int(getattr(worker, "concurrency", 1) or 1),
            hostname=str(getattr(worker, "hostname", "")),
            pid=os.getpid(),
            started_ms=now_ms(),
        )


class _StateTimer(PeriodicThread):
    """Saves a pool child's local state every ``interval_s`` on a daemon thread."""

    def __init__(self, runtime: Runtime, interval_s: float) -> None:
        super().__init__("local-state", interval_s)
        self._runtime = runtime

    def tick(self) -> None:
        """Checkpoint the local state (a failure is logged and retried at the next tick)."""
        save_local_state(self._runtime)


_timer: _StateTimer | None = None


def _start_pool_process(**_: Any) -> None:
    """In a new prefork pool child: restore its own state and keep checkpointing it."""
    global _keeper, _keeper_lock, _timer
    runtime = get_runtime()
    if not runtime.identity.tiers:
        return
    # State inherited through fork belongs to the parent, not to this child.
    _keeper_lock = threading.Lock()
    _keeper = None
    inherited = runtime.local_state
    runtime.local_state = LocalAgentState(agent_id=inherited.agent_id, tier=inherited.tier)
    restore_local_state(runtime)
    runtime.local_state.status = AgentStatus.IDLE
    # Tasks run here: a write Redis refuses waits until Redis takes it, so the task
    # finishes (and acks its message) then, instead of failing and losing its work.
    ride_out_writes(True)
    _timer = _StateTimer(runtime, runtime.settings.heartbeat_interval_s).start()


def _stop_pool_process(**_: Any) -> None:
    """In a prefork pool child that exits: save its local state one last time."""
    ride_out_writes(False)  # a full Redis must not hold the child's exit up
    if _timer is None:
        return
    _timer.stop()
    try:
        save_local_state(get_runtime())
    except Exception:
        log.warning("could not checkpoint the local state", exc_info=True)


worker_process_init.connect(_start_pool_process)
worker_process_shutdown.connect(_stop_pool_process)
