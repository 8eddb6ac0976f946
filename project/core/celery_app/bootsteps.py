"""Agent lifecycle inside a Celery worker: register a card, heartbeat, say goodbye.

Each tier adds one :class:`AgentStep` subclass to ``app.steps["worker"]``. The heartbeat runs
on its own thread in the worker's main process, so it needs no beat and keeps
going while tasks run; a Redis outage is logged and ridden out. A tier adds
behaviour of its own through :class:`AgentHooks`.

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
import threading
from collections.abc import Callable
from typing import Any, ClassVar, Self

from celery import bootsteps
from celery.signals import worker_process_init, worker_process_shutdown
from celery.utils.log import current_process_index

from project.core.a2a.envelope import now_ms
from project.core.constants import Tier
from project.core.metrics import start_agent_metrics
from project.core.models import AgentCard, AgentStatus, LocalAgentState, Skill
from project.core.runtime import Runtime, get_runtime
from project.core.state.agent_state import AgentStateKeeper, agent_thread_id

log = logging.getLogger("project.lifecycle")

try:
    VERSION = importlib.metadata.version("agents-celery")
except importlib.metadata.PackageNotFoundError:  # running from a source tree
    VERSION = "0.0.0"


class PeriodicThread:
    """Runs ``tick`` every ``interval_s`` on a daemon thread; its errors are logged.

    A tick that fails (a Redis outage, say) is retried at the next interval.
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
        while not self._stop.wait(self._interval_s):
            try:
                self.tick()
            except Exception:
                log.warning("%s failed; retrying", self._thread.name, exc_info=True)


class Heartbeat(PeriodicThread):
    """Writes an agent's heartbeat every ``interval_s`` on a daemon thread.

    ``on_beat`` runs after each heartbeat, on the same thread; its errors are logged.
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

    def tick(self) -> None:
        """Beat, then run the hook, each failure logged on its own."""
        try:
            if self._runtime.registry.heartbeat(self._agent_id):
                log.warning(
                    "agent re-admitted after being marked dead",
                    extra={"agent_id": self._agent_id},
                )
        except Exception:
            log.warning(
                "heartbeat failed; retrying", exc_info=True, extra={"agent_id": self._agent_id}
            )
        if self._on_beat is not None:
            try:
                self._on_beat()
            except Exception:
                log.warning(
                    "heartbeat hook failed", exc_info=True, extra={"agent_id": self._agent_id}
                )


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


def tier_card(
    runtime: Runtime, worker: Any, *, tier: Tier, queue: str, description: str, skill: Skill
) -> AgentCard:
    """The card of a tier agent (coordinator, distributor) that serves a shared queue."""
    agent_id = runtime.identity.agent_id
    return AgentCard(
        name=agent_id,
        description=description,
        version=VERSION,
        url=f"celery://{queue}",
        skills=[skill],
        id=agent_id,
        tier=tier,
        queue=queue,
        concurrency=int(getattr(worker, "concurrency", 1) or 1),
        hostname=str(getattr(worker, "hostname", "")),
        pid=os.getpid(),
        started_ms=now_ms(),
    )


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
    _timer = _StateTimer(runtime, runtime.settings.heartbeat_interval_s).start()


def _stop_pool_process(**_: Any) -> None:
    """In a prefork pool child that exits: save its local state one last time."""
    if _timer is None:
        return
    _timer.stop()
    try:
        save_local_state(get_runtime())
    except Exception:
        log.warning("could not checkpoint the local state", exc_info=True)


worker_process_init.connect(_start_pool_process)
worker_process_shutdown.connect(_stop_pool_process)
