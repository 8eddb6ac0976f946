"""Looking at and steering jobs: their typed view, resume, cancel, input timeouts.

Apps reach these through ``project.get_job``, ``resume_job``, ``cancel_job``,
``job_events`` and ``list_jobs``; the coordinator's supervisor fails agents that waited
for input too long. Each state change is one Lua script on the job's record.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

from celery import Celery
from pydantic import BaseModel, ConfigDict, JsonValue
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from project.core.celery_app import app
from project.core.constants import COORDINATOR, COORDINATOR_QUEUE, TASK_RESUME, execute_task_id
from project.core.errors import (
    InputTimeoutError,
    JobCanceledError,
    JobNotFoundError,
    JobNotWaitingError,
    StoreUnavailableError,
    WriteRefusedError,
)
from project.core.messages import ResumeRequest
from project.core.models import JobRecord, JobStatus
from project.core.runtime import Runtime
from project.core.state.connections import write_refusal
from project.core.state.joblog import JobLogEvent
from project.core.state.jobs import FinishKind
from project.core.state.results import error_to_dict, publish_final_result

log = logging.getLogger("project.jobs")

P = ParamSpec("P")
R = TypeVar("R")


def _store_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Redis failures as this system's typed errors: StoreUnavailableError (unreachable)
    and WriteRefusedError (full, read-only), never redis-py's own."""

    @functools.wraps(fn)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        with store_errors():
            return fn(*args, **kwargs)

    return call


@contextmanager
def store_errors() -> Iterator[None]:
    """Turn redis-py's errors into StoreUnavailableError / WriteRefusedError."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError) as exc:
        raise StoreUnavailableError(f"Redis is unreachable: {exc}") from exc
    except ResponseError as exc:
        why = write_refusal(exc)
        if why is None:
            raise
        raise WriteRefusedError(f"Redis refused the write: {why}") from exc


__all__ = [
    "CancelOutcome",
    "Interrupt",
    "JobView",
    "cancel",
    "events",
    "fail_waiting",
    "list_owned",
    "resume",
    "view",
]


class Interrupt(BaseModel):
    """A question a parked agent waits on (``interrupt(value)`` in one of its nodes)."""

    model_config = ConfigDict(frozen=True)

    id: str
    """Answer this interrupt alone with ``resume_job(job_id, {id: answer})``."""
    value: JsonValue


class JobView(BaseModel):
    """A job as an app sees it (``project.get_job``)."""

    model_config = ConfigDict(frozen=True)

    id: str
    task_type: str
    status: JobStatus
    epoch: int
    """Dispatch attempts so far; a re-routed or resumed job runs at a higher one."""
    attempts: int
    retries: int
    """Retries by the task type's retry policy."""
    worker: str
    """The worker that has (or last had) the job."""
    created_ms: int
    updated_ms: int
    finished_ms: int | None
    interrupts: list[Interrupt]
    """What an ``input_required`` agent waits on."""
    result: JsonValue
    error: dict[str, str] | None
    """``{"type": "...Error", "message": ...}`` of a failed or canceled job."""
    owner: str | None
    a2a_message: dict[str, JsonValue] | None

    @property
    def is_final(self) -> bool:
        """True once the job has its one result (or error)."""
        return self.status.is_final

    @classmethod
    def of(cls, record: JobRecord) -> JobView:
        """The view of a job's record."""
        waiting = record.status is JobStatus.INPUT_REQUIRED
        return cls(
            id=record.id,
            task_type=record.task_type,
            status=record.status,
            epoch=record.epoch,
            attempts=record.attempts,
            retries=record.retries,
            worker=record.assignee,
            created_ms=record.created_ms,
            updated_ms=record.updated_ms,
            finished_ms=record.finished_ms,
            interrupts=[Interrupt.model_validate(i) for i in record.interrupts] if waiting else [],
            result=record.result,
            error=record.error,
            owner=record.owner,
            a2a_message=record.a2a_message,
        )


class CancelOutcome(BaseModel):
    """What ``cancel_job`` did."""

    model_config = ConfigDict(frozen=True)

    canceled: bool
    """False: the job was final already, and nothing changed."""
    status: JobStatus
    """The job's status now."""
    message: str


@_store_errors
def view(rt: Runtime, job_id: str) -> JobView:
    """The job's typed view.

    Raises:
        JobNotFoundError: no such job (never submitted, or expired).
    """
    record = rt.jobs.get(job_id)
    if record is None:
        raise JobNotFoundError(f"no job {job_id!r} (never submitted, or expired)")
    return JobView.of(record)


@_store_errors
def list_owned(
    rt: Runtime, owner: str, *, limit: int = 50, before_ms: int | None = None
) -> list[JobView]:
    """An owner's jobs, newest first; expired ones are dropped from the owner's index."""
    ids = rt.jobs.owned_by(owner, limit=limit, before_ms=before_ms)
    found: list[JobView] = []
    gone: list[str] = []
    for job_id in ids:
        record = rt.jobs.get(job_id)
        if record is None:
            gone.append(job_id)
        else:
            found.append(JobView.of(record))
    rt.jobs.forget_owned(owner, gone)
    return found


@_store_errors
def resume(
    rt: Runtime,
    job_id: str,
    value: Any,
    *,
    a2a_message: dict[str, JsonValue] | None = None,
    celery_app: Celery = app,
    sender: str | None = None,
) -> JobView:
    """Answer a parked agent and send it on to a worker.

    With ``sender`` (an agent holding the A2A keys, e.g. the gateway), the request to send
    it on is a signed ResumeRequest carrying the answer, so the answer travels signed from
    the sender to the worker; without, the coordinator takes the answer from the record.

    ``value`` answers every pending interrupt, unless it is a mapping whose keys are all
    pending interrupt ids: then each answers its own (interrupts left out stay pending,
    and the agent parks again on them).

    Raises:
        JobNotFoundError: no such job.
        JobNotWaitingError: the job is not waiting for input.
    """
    current = view(rt, job_id)
    if current.status is not JobStatus.INPUT_REQUIRED:
        raise JobNotWaitingError(
            f"job {job_id} is {current.status.value}, not waiting for input: nothing to resume"
        )
    pending = {i.id for i in current.interrupts}
    if isinstance(value, dict) and value and set(value) <= pending:
        answers: dict[str, JsonValue] = dict(value)
    else:
        answers = dict.fromkeys(pending, value)
    outcome, detail = rt.jobs.resume(job_id, answers, a2a_message=a2a_message)
    if outcome == "missing":
        raise JobNotFoundError(f"no job {job_id!r} (never submitted, or expired)")
    if outcome != "resumed":
        raise JobNotWaitingError(
            f"job {job_id} is {detail}, not waiting for input: nothing to resume"
        )
    # Sent on by the coordinator, which signs it for the distributor; if this message
    # is lost, the job is PENDING and open, and the health check sends it on.
    kwargs: dict[str, Any] = {}
    if sender is not None:
        signed = rt.signer.request(
            sender=sender,
            recipient=COORDINATOR,
            payload=ResumeRequest(job_id=job_id, answer=answers).model_dump(mode="json"),
            request_id=job_id,
        )
        kwargs["envelope"] = signed.to_wire()
    celery_app.send_task(
        TASK_RESUME, args=[job_id], kwargs=kwargs, queue=COORDINATOR_QUEUE, ignore_result=True
    )
    return view(rt, job_id)


@_store_errors
def cancel(rt: Runtime, job_id: str, *, celery_app: Celery = app) -> CancelOutcome:
    """End a job as canceled, wherever it is.

    Not yet dispatched or waiting for input: it ends here. Queued at a worker: the worker
    drops it on arrival. A running agent stops at its next step boundary (its next
    checkpoint or event write is refused). A running plain handler's run is terminated
    (``revoke(terminate=True)``) and its result, if any, discarded.

    Raises:
        JobNotFoundError: no such job.
    """
    error = JobCanceledError(f"job {job_id} was canceled")
    reply = rt.jobs.cancel(job_id, error_to_dict(error))
    if reply[0] == "missing":
        raise JobNotFoundError(f"no job {job_id!r} (never submitted, or expired)")
    if reply[0] == "final":
        status = JobStatus(reply[1])
        if status is JobStatus.CANCELED:  # again, after a lost reply or a crash: publish again
            record = rt.jobs.get(job_id)
            if record is not None:
                publish_final_result(celery_app.backend, job_id, status, None, record.error)
        return CancelOutcome(
            canceled=False,
            status=status,
            message=f"job {job_id} is {status.value} already: nothing changed",
        )
    previous, epoch, kind = reply[1], reply[2], reply[4]
    publish_final_result(celery_app.backend, job_id, JobStatus.CANCELED, None, error_to_dict(error))
    if previous == JobStatus.IN_PROGRESS and kind != "agent":
        celery_app.control.revoke(execute_task_id(job_id, int(epoch)), terminate=True)
    return CancelOutcome(
        canceled=True,
        status=JobStatus.CANCELED,
        message=f"job {job_id} canceled (it was {previous})",
    )


def events(
    rt: Runtime, job_id: str, after: str | None = None, *, block_s: float | None = None
) -> Iterator[JobLogEvent]:
    """The job's events after the cursor ``after``, as they come, until it is final.

    Raises (while iterating):
        StoreUnavailableError: Redis is unreachable; continue later from the last cursor.
    """
    with store_errors():
        yield from rt.joblog.follow(job_id, after, block_s=block_s)


@_store_errors
def fail_waiting(rt: Runtime, *, celery_app: Celery = app) -> list[str]:
    """Fail the parked agents whose input timeout has passed (InputTimeoutError).

    A job leaves ``jobs:waiting`` only once its result is published, so a crash in
    between is repaired by the next sweep (which publishes the recorded result again).
    """
    failed: list[str] = []
    seconds, micros = rt.redis.time()  # the clock the deadlines were set on
    for job_id in rt.jobs.waiting_past(int(seconds) * 1000 + int(micros) // 1000):
        record = rt.jobs.get(job_id)
        if record is not None and record.status is JobStatus.INPUT_REQUIRED:
            error = error_to_dict(
                InputTimeoutError(
                    f"job {job_id} waited for input longer than {record.input_timeout_s}s"
                )
            )
            outcome = rt.jobs.finish(
                job_id,
                epoch=record.epoch,
                status=JobStatus.FAILED,
                error=error,
                only_from=JobStatus.INPUT_REQUIRED,
            )
            if outcome.kind is FinishKind.RECORDED:
                publish_final_result(celery_app.backend, job_id, JobStatus.FAILED, None, error)
                failed.append(job_id)
            elif outcome.kind is FinishKind.STALE:
                continue  # resumed meanwhile: its resume took it out of jobs:waiting
            elif outcome.kind is FinishKind.ALREADY:  # another sweep recorded it: publish too
                publish_final_result(
                    celery_app.backend, job_id, outcome.status, outcome.result, outcome.error
                )
        elif record is not None and record.status.is_final:
            publish_final_result(
                celery_app.backend, job_id, record.status, record.result, record.error
            )
        rt.jobs.stop_waiting(job_id)
    return failed
