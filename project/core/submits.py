"""Publishing submit messages the way every client of ours does.

A submit is recorded as an *intent* first (so a submit lost with a crashing
Redis is re-sent by the health check), then published with
``ignore_result=True``: the submit task stores no result of its own, since the
distributor stores the job's final result under the same id later. The
returned AsyncResult is marked not ignored, so ``.get()`` waits for that
result (it subscribes, then reads the stored state, so nothing is missed).

A Redis that refuses writes (full at ``maxmemory``, a read-only replica): a
submit whose intent it refuses fails at the caller with
:class:`~project.core.errors.WriteRefusedError` and nothing submitted. A submit
whose intent is recorded is accepted: if the publish after it is refused, the
health check sends the intent once Redis takes writes, and the returned
AsyncResult gets its result then.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from celery import Celery
from celery.result import AsyncResult
from kombu.exceptions import OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError

from project.core.constants import TASK_SUBMIT
from project.core.errors import WriteRefusedError
from project.core.state.connections import write_refusal
from project.core.state.jobs import JobStore

log = logging.getLogger("project.submits")


def record_submits(store: JobStore, calls: dict[str, dict[str, Any]]) -> None:
    """Record submit calls (job id -> call) as intents, all or none.

    Raises:
        WriteRefusedError: Redis refused the write (full, read-only): nothing was submitted.
    """
    try:
        store.record_intents(calls)
    except Exception as exc:
        reason = write_refusal(exc)
        if reason is None:
            raise
        raise WriteRefusedError(
            f"Redis refused to record the submit: {reason}; nothing was submitted. "
            "Submit again once Redis takes writes (an operator raises maxmemory or frees memory)."
        ) from exc


def publish_recorded(
    celery_app: Celery, job_id: str, publish: Callable[[], AsyncResult]
) -> AsyncResult:
    """Run ``publish`` for a submit whose intent is recorded; a failed publish is deferred.

    The intent is there, so the health check sends the submit once Redis takes
    writes (or the broker connection is back): a refused write, or a broker channel
    a refusal closed, defers the submit instead of failing it. The AsyncResult
    returned either way gets the job's result.
    """
    try:
        return publish()
    except Exception as exc:
        reason = write_refusal(exc)
        if reason is None and not isinstance(exc, OperationalError | RedisConnectionError):
            raise
        log.warning(
            "could not publish a recorded submit (%s); the coordinator's health check "
            "sends it once Redis takes writes",
            reason or exc,
            extra={"job_id": job_id},
        )
        result = celery_app.AsyncResult(job_id)
        result.ignored = False
        return result


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
    """Record ``calls`` (job id -> call) as intents, then publish them over one connection.

    Raises:
        WriteRefusedError: Redis refused the intents (full, read-only): nothing was submitted.
    """
    record_submits(store, {job_id: dict(call) for job_id, call in calls.items()})
    with celery_app.producer_or_acquire() as producer:
        return [
            publish_recorded(
                celery_app,
                job_id,
                lambda job_id=job_id, call=call: publish_submit(  # type: ignore[misc]
                    celery_app, job_id, call, producer=producer
                ),
            )
            for job_id, call in calls.items()
        ]


__all__ = ["publish_recorded", "publish_submit", "record_submits", "submit_calls"]
