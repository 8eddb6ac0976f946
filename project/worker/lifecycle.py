"""The worker tier's agent card: what a worker runs, as an A2A AgentCard."""

from __future__ import annotations

import importlib
import json
import os
from typing import Any

from celery.worker import state as worker_state

from project.core.celery_app import app
from project.core.constants import KEY_RUNNING, TASK_EXECUTE, worker_queue
from project.core.envelope import now_ms
from project.core.errors import ConfigurationError
from project.core.lifecycle import VERSION, AgentHooks, lifecycle_step
from project.core.models import AgentCard, Skill
from project.core.runtime import Runtime
from project.core.settings import get_settings
from project.worker.handlers import HANDLERS


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
        ConfigurationError: ``AGENTS_WORKER_TASK_TYPES`` names a type with no handler.
    """
    settings = runtime.settings
    worker_id = runtime.identity.worker_id or runtime.identity.agent_id
    offered = settings.worker_task_types or sorted(HANDLERS)
    unknown = [t for t in offered if t not in HANDLERS]
    if unknown:
        raise ConfigurationError(f"no handler for task types {unknown}; known: {sorted(HANDLERS)}")
    skills = [
        Skill(
            id=t,
            name=t,
            description=HANDLERS[t].description.strip().splitlines()[0]
            if HANDLERS[t].description
            else "",
            tags=list(HANDLERS[t].tags),
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
        tier="worker",
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


class RunningJobsHooks(AgentHooks):
    """Reports, with every heartbeat, which jobs the worker is running.

    The health check compares it with the job records: a job IN_PROGRESS on a live
    worker that does not run it lost its result on the way back, and is re-sent.
    """

    def on_heartbeat(self, runtime: Runtime, card: AgentCard) -> None:
        """Write the running jobs, valid for one heartbeat timeout."""
        runtime.redis.set(
            KEY_RUNNING + card.id,
            json.dumps(running_job_ids()),
            px=int(runtime.settings.heartbeat_timeout_s * 1000),
        )


_WorkerStep = lifecycle_step("worker", build_worker_card, RunningJobsHooks())


class _WorkerLifecycle(_WorkerStep):  # type: ignore[misc,valid-type]
    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        # Before the pool forks, so every child process has the app's handlers.
        load_handler_modules(get_settings().handler_modules)


app.steps["worker"].add(_WorkerLifecycle)
