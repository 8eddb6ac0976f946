"""Publishing submit messages the way every client of ours does.

A submit is recorded as an *intent* first (so a submit lost with a crashing
Redis is re-sent by the health check), then published with
``ignore_result=True``: the submit task stores no result of its own, since the
distributor stores the job's final result under the same id later. The
returned AsyncResult is marked not ignored, so ``.get()`` waits for that
result (it subscribes, then reads the stored state, so nothing is missed).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celery import Celery
from celery.result import AsyncResult

from project.core.constants import TASK_SUBMIT
from project.core.state.jobs import JobStore


def publish_submit(
    celery_app: Celery, job_id: str, call: Mapping[str, Any], **options: Any
) -> AsyncResult:
    """Publish one recorded submit call (``{"args": [...], "kwargs": {...}}``)."""
    result = celery_app.send_task(
        TASK_SUBMIT,
        args=call["args"],
        kwargs=call["kwargs"],
        task_id=job_id,
        ignore_result=True,
        **options,
    )
    result.ignored = False
    return result


def submit_calls(
    celery_app: Celery, store: JobStore, calls: Mapping[str, Mapping[str, Any]]
) -> list[AsyncResult]:
    """Record ``calls`` (job id -> call) as intents, then publish them over one connection."""
    store.record_intents({job_id: dict(call) for job_id, call in calls.items()})
    with celery_app.producer_or_acquire() as producer:
        return [
            publish_submit(celery_app, job_id, call, producer=producer)
            for job_id, call in calls.items()
        ]


__all__ = ["publish_submit", "submit_calls"]
