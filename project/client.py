"""What an app uses besides ``submit_task``: submitting many jobs at once."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from celery import Celery
from celery.result import AsyncResult
from celery.utils import uuid

from project.core.celery_app import app
from project.core.runtime import get_runtime
from project.core.state.jobs import JobStore
from project.core.submits import submit_calls


def submit_many(
    jobs: Iterable[Mapping[str, Any]],
    *,
    celery_app: Celery | None = None,
    store: JobStore | None = None,
) -> list[AsyncResult]:
    """Submit many jobs over one broker connection.

    Each job is a mapping with ``task_type`` and ``payload`` and optionally
    ``priority``, ``requirements`` and ``deadline_s`` (the arguments of
    ``submit_task``). Returns one AsyncResult per job, in order.

    ``celery_app`` and ``store`` default to this process's app and job store;
    a client bound to another broker passes its own.
    """
    calls: dict[str, dict[str, Any]] = {}
    for job in jobs:
        options = {k: v for k, v in job.items() if k not in ("task_type", "payload")}
        calls[uuid()] = {"args": [job["task_type"], dict(job["payload"])], "kwargs": options}
    return submit_calls(celery_app or app, store or get_runtime().jobs, calls)
