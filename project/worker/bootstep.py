"""The worker as an agent: its card (the task types it runs), and its consumer watchdog."""

from __future__ import annotations

import faulthandler
import importlib
import json
import logging
import os
import signal
import sys
import threading
import time
from typing import Any, ClassVar

from celery.signals import task_received
from celery.worker import state as worker_state

from project.core.a2a.envelope import now_ms
from project.core.celery_app.bootsteps import VERSION, AgentHooks, AgentStep
from project.core.celery_app.broker_keys import broker_keys
from project.core.constants import KEY_RUNNING, TASK_EXECUTE, Tier, worker_queue
from project.core.errors import ConfigurationError
from project.core.models import TIME_LIMIT_GRACE_S, AgentCard, Skill
from project.core.runtime import Runtime, get_runtime
from project.core.settings import get_settings
from project.worker.handlers import HANDLERS

log = logging.getLogger("project.worker")

STALL_EXIT_GRACE_S = 15.0
"""How long a stalled worker's cold shutdown may take before the process exits hard."""
STALL_EXIT_CODE = 70
"""A stalled worker's exit code (EX_SOFTWARE), so ``Restart=on-failure`` restarts it too."""


BUILTIN_AGENT_MODULES = ("project.worker.assistant",)
"""The agents every worker offers besides the plain handlers (the example assistant)."""


def load_handler_modules(modules: list[str]) -> None:
    """Import the app modules that register extra handlers.

    Raises:
        ConfigurationError: a module cannot be imported.
    """
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigurationError(f"cannot import handler module {module!r}: {exc}") from exc


def build_worker_card(runtime: Runtime, worker: Any) -> AgentCard:
    """Describe this worker: its queue, the task types it runs, its tags and concurrency.

    Raises:
        ConfigurationError: ``AGENTS_WORKER_TASK_TYPES`` names a type with no handler, or
            a type's time limit does not end before the broker's visibility timeout (the
            broker would hand the running job out a second time).
    """
    settings = runtime.settings
    worker_id = runtime.identity.worker_id or runtime.identity.agent_id
    offered = settings.worker_task_types or sorted(HANDLERS)
    unknown = [t for t in offered if t not in HANDLERS]
    if unknown:
        raise ConfigurationError(f"no handler for task types {unknown}; known: {sorted(HANDLERS)}")
    too_long = [
        t
        for t in offered
        if (limit := HANDLERS[t].time_limit_s) is not None
        and limit + TIME_LIMIT_GRACE_S >= settings.visibility_timeout_s
    ]
    if too_long:
        raise ConfigurationError(
            f"task types {too_long} may run longer than the broker's visibility timeout "
            f"({settings.visibility_timeout_s} s), which would deliver them twice: raise "
            f"AGENTS_VISIBILITY_TIMEOUT_S above their time limit plus {TIME_LIMIT_GRACE_S:g} s"
        )
    skills = [
        Skill(
            id=t,
            name=t,
            description=HANDLERS[t].description.strip().splitlines()[0]
            if HANDLERS[t].description
            else "",
            tags=list(HANDLERS[t].tags),
            kind=HANDLERS[t].kind,
            time_limit_s=HANDLERS[t].time_limit_s,
        )
        for t in offered
    ]
    queue = worker_queue(worker_id)
    return AgentCard(
        name=worker_id,
        description=f"Worker agent {worker_id}: runs {', '.join(offered)}",
        version=VERSION,
        url=f"celery://{queue}",
        skills=skills,
        id=worker_id,
        tier=Tier.WORKER,
        queue=queue,
        concurrency=int(getattr(worker, "concurrency", 1) or 1),
        tags=list(settings.worker_tags),
        weight=settings.worker_weight,
        hostname=str(getattr(worker, "hostname", "")),
        pid=os.getpid(),
        started_ms=now_ms(),
    )


def running_job_ids() -> list[str]:
    """Jobs this worker process has taken from its queue and not yet finished."""
    running: set[str] = set()
    for request in list(worker_state.reserved_requests) + list(worker_state.active_requests):
        if request.task_name != TASK_EXECUTE or not request.args:
            continue
        envelope = request.args[0]
        payload = envelope.get("payload") if isinstance(envelope, dict) else None
        job_id = payload.get("job_id") if isinstance(payload, dict) else None
        if isinstance(job_id, str):
            running.add(job_id)
    return sorted(running)


class ConsumerWatchdog:
    """Notices a worker that is alive but no longer takes messages from its queue.

    A known Celery-on-Redis failure: the process runs and heartbeats, but its
    consumer has gone quiet, so the jobs routed to it wait forever while the
    registry calls it live. The worker is *stalled* once, at every check for
    ``stall_after_s``, messages waited in its queue while it had a free slot, and
    it received none. A check that could not look (Redis away), or that comes
    more than ``max_gap_s`` after the one before (the process was paused or
    starved), starts over, so an outage or a pause is not mistaken for a stall.
    """

    def __init__(self, stall_after_s: float, max_gap_s: float = float("inf")) -> None:
        self.stall_after_s = stall_after_s
        self.max_gap_s = max_gap_s
        self._since: float | None = None
        self._last_check: float | None = None

    def note_received(self) -> None:
        """The consumer took a message: it is not stalled."""
        self._since = None

    def note_unknown(self) -> None:
        """This check could not look at the queue."""
        self._since = None

    def check(self, *, waiting: int, active: int, concurrency: int, now: float) -> float | None:
        """Seconds the worker has been stalled, once that reaches ``stall_after_s``; else None."""
        gap = None if self._last_check is None else now - self._last_check
        self._last_check = now
        if gap is not None and gap > self.max_gap_s:
            self._since = None
        if self.stall_after_s <= 0 or waiting <= 0 or active >= concurrency:
            self._since = None
            return None
        if self._since is None:
            self._since = now
        stalled_s = now - self._since
        return stalled_s if stalled_s >= self.stall_after_s else None


def queue_names(worker_id: str) -> list[str]:
    """The Redis lists of a worker's queue, one per priority level."""
    return broker_keys().priority_lists(worker_queue(worker_id))


def stop_stalled_worker(
    worker_id: str, stalled_s: float, waiting: int, controller: Any | None = None
) -> None:
    """Log, then stop this worker process: cold shutdown, and a hard exit if that hangs.

    Either way it exits with :data:`STALL_EXIT_CODE`: Celery's cold shutdown would
    exit 0, so ``controller`` (the worker's ``WorkController``) is given that code first.
    """
    log.critical(
        "worker consumer stalled: stopping so its jobs are re-routed and it is restarted",
        extra={
            "agent_id": worker_id,
            "stalled_s": round(stalled_s, 1),
            "waiting": waiting,
            "reserved": len(worker_state.reserved_requests),
            "active": len(worker_state.active_requests),
        },
    )
    # Where every thread is, for whoever investigates (the main thread runs the
    # consumer), to the process's real stderr: Celery replaces sys.stderr.
    try:
        faulthandler.dump_traceback(file=sys.__stderr__ or sys.stderr, all_threads=True)
    except (AttributeError, OSError, ValueError):
        log.warning("could not dump the threads' stacks", exc_info=True)
    if controller is not None:
        controller.exitcode = STALL_EXIT_CODE  # ``celery worker`` exits with it
    threading.Timer(STALL_EXIT_GRACE_S, os._exit, args=(STALL_EXIT_CODE,)).start()
    os.kill(os.getpid(), signal.SIGQUIT)


class WorkerHooks(AgentHooks):
    """With every heartbeat: report the running jobs, and check the consumer is not stuck.

    The health check compares the running jobs with the job records: a job
    IN_PROGRESS on a live worker that does not run it lost its result on the way
    back, and is re-sent. See :class:`ConsumerWatchdog` for the other check.
    """

    def __init__(self) -> None:
        self.watchdog = ConsumerWatchdog(0)
        self.controller: Any | None = None
        """The worker's ``WorkController``, once started."""
        self._stopping = False

    def after_start(self, runtime: Runtime, card: AgentCard) -> None:
        """Arm the watchdog (in the worker's main process, where messages are received)."""
        settings = runtime.settings
        self.watchdog = ConsumerWatchdog(
            settings.worker_stall_timeout_s, max_gap_s=3 * settings.heartbeat_interval_s
        )
        task_received.connect(self._received, weak=False)

    def _received(self, sender: Any = None, request: Any = None, **_: Any) -> None:
        self.watchdog.note_received()

    def on_heartbeat(self, runtime: Runtime, card: AgentCard) -> None:
        """Write the running jobs (valid for one heartbeat timeout), read the queue depth."""
        pipe = runtime.redis.pipeline(transaction=False)
        pipe.set(
            KEY_RUNNING + card.id,
            json.dumps(running_job_ids()),
            px=int(runtime.settings.heartbeat_timeout_s * 1000),
        )
        for name in queue_names(card.id):
            pipe.llen(name)
        try:
            replies = pipe.execute()
        except Exception:
            self.watchdog.note_unknown()
            raise
        waiting = sum(int(n) for n in replies[1:])
        stalled_s = self.watchdog.check(
            waiting=waiting,
            active=len(worker_state.active_requests),
            concurrency=card.concurrency,
            now=time.monotonic(),
        )
        if stalled_s is not None and not self._stopping:
            self._stopping = True
            stop_stalled_worker(card.id, stalled_s, waiting, self.controller)


class WorkerStep(AgentStep):
    """Registers a worker agent, reports its running jobs, watches its consumer."""

    name = "project.worker.bootstep"
    tier: ClassVar[Tier] = Tier.WORKER
    hooks: ClassVar[WorkerHooks] = WorkerHooks()

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        # Before the pool forks, so every child process has the app's handlers.
        if self.tier in get_runtime().identity.tiers:
            load_handler_modules([*BUILTIN_AGENT_MODULES, *get_settings().handler_modules])

    def start(self, worker: Any) -> None:
        """Give the watchdog the worker's controller, then start as every agent does."""
        self.hooks.controller = worker
        super().start(worker)

    def build_card(self, runtime: Runtime, worker: Any) -> AgentCard:
        """The worker's card (see :func:`build_worker_card`)."""
        return build_worker_card(runtime, worker)
