"""Final job results in the Celery result backend, under the id the app holds."""

from __future__ import annotations

from typing import Any

from celery import states

from project.core.errors import JobError, job_error_class
from project.core.models import JobStatus
from project.core.state.connections import WriteOp, ride_out, rides_out_writes


def error_to_dict(error: JobError) -> dict[str, str]:
    """The JSON form of a job's error, as recorded and sent between tiers."""
    return {"type": type(error).__name__, "message": str(error)}


def error_from_dict(data: dict[str, Any] | None) -> JobError:
    """Rebuild a job error; an unknown type becomes a HandlerError."""
    data = data or {}
    cls = job_error_class(str(data.get("type")))
    return cls(str(data.get("message", "job failed")))


def publish_final_result(
    backend: Any,
    job_id: str,
    status: str,
    result: Any,
    error: dict[str, Any] | None,
) -> None:
    """Store a job's one final result where ``AsyncResult(job_id).get()`` finds it.

    Where refused writes are ridden out (a pool child's task), a store Redis refuses
    waits until Redis takes it: the job's record is final already, and the app waits
    for this result.
    """
    if status == JobStatus.COMPLETED:
        value, state = result, states.SUCCESS
    else:
        value, state = error_from_dict(error), states.FAILURE

    def store() -> None:
        backend.store_result(job_id, value, state)

    if rides_out_writes():
        ride_out(store, op=WriteOp.RESULT)
    else:
        store()
