"""What an app uses besides ``submit_task``: submitting many jobs at once, and looking at
and steering jobs (``get_job``, ``resume_job``, ``cancel_job``, ``job_events``,
``list_jobs``)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from celery import Celery
from celery.result import AsyncResult
from celery.utils import uuid

from project.coordinator.tasks import submit_task
from project.core import control
from project.core.celery_app import app
from project.core.constants import COORDINATOR
from project.core.control import CancelOutcome, JobView
from project.core.messages import SubmitRequest
from project.core.models import Skill
from project.core.runtime import get_runtime
from project.core.state.joblog import JobLogEvent
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


def get_job(job_id: str) -> JobView:
    """The job's typed view: status, pending interrupts, worker, epoch, times, result.

    Raises:
        JobNotFoundError: no such job (never submitted, or expired).
    """
    return control.view(get_runtime(), job_id)


def resume_job(
    job_id: str,
    value: Any,
    *,
    a2a_message: dict[str, Any] | None = None,
    sender: str | None = None,
) -> JobView:
    """Answer an agent waiting for input; it continues on any eligible worker.

    ``value`` answers every pending interrupt, or, as ``{interrupt id: answer}``, each
    its own. An agent that holds the A2A keys (the gateway) passes ``sender``: the answer
    then travels in envelopes signed by it.

    Raises:
        JobNotWaitingError: the job is not waiting for input.
        JobNotFoundError: no such job.
    """
    return control.resume(get_runtime(), job_id, value, a2a_message=a2a_message, sender=sender)


def submit_signed(
    task_type: str,
    payload: dict[str, Any],
    *,
    sender: str,
    task_id: str | None = None,
    **options: Any,
) -> AsyncResult:
    """Submit a job as an agent that holds the A2A keys (the gateway does): the submit is
    a REQUEST envelope signed by ``sender``, which the coordinator verifies before it takes
    the job in, so the job is signed from its first hop. ``options`` are ``submit_task``'s.

    Raises:
        ConfigurationError: this process has no A2A keys to sign with.
        WriteRefusedError: Redis refused to record the submit.
    """
    job_id = task_id or uuid()
    spec = {"task_type": task_type, "payload": payload, **options}
    envelope = get_runtime().signer.request(
        sender=sender,
        recipient=COORDINATOR,
        payload=SubmitRequest(job_id=job_id, job=spec).model_dump(mode="json"),
        request_id=job_id,
    )
    result: AsyncResult = submit_task.apply_async(
        kwargs={"envelope": envelope.to_wire()}, task_id=job_id
    )
    return result


def cancel_job(job_id: str) -> CancelOutcome:
    """End a job as canceled wherever it is; a final job is left as it is (``canceled``
    is False). The job's ``.get()`` raises JobCanceledError.

    Raises:
        JobNotFoundError: no such job.
    """
    return control.cancel(get_runtime(), job_id)


def job_events(
    job_id: str, after: str | None = None, *, block_s: float | None = None
) -> Iterator[JobLogEvent]:
    """The job's progress and status events in order, from after the cursor ``after``
    (each event's ``id``), waiting for new ones, until the job is final (or ``block_s``
    passes without an event)."""
    return control.events(get_runtime(), job_id, after, block_s=block_s)


def list_jobs(owner: str, *, limit: int = 50, before_ms: int | None = None) -> list[JobView]:
    """The jobs ``owner`` submitted, newest first (``before_ms`` pages back)."""
    return control.list_owned(get_runtime(), owner, limit=limit, before_ms=before_ms)


def offered_skills() -> list[Skill]:
    """The task types live workers offer now, one skill each."""
    skills: dict[str, Skill] = {}
    for card in get_runtime().live_workers.get(fresh=True):
        for skill in card.skills:
            skills.setdefault(skill.id, skill)
    return sorted(skills.values(), key=lambda s: s.id)
