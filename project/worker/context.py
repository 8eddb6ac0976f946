"""``current_job()``: the job a handler or an agent is running, for the code inside it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

__all__ = ["JobContext", "current_job", "running"]


@dataclass(frozen=True, slots=True)
class JobContext:
    """What a running handler or agent knows about its job."""

    job_id: str
    task_type: str
    epoch: int
    """The dispatch attempt this run belongs to (a re-routed job runs at a higher one)."""
    a2a_message: dict[str, Any] | None = None
    """The A2A message that started or resumed the job (spec JSON form); None for jobs
    not sent through the gateway."""
    owner: str | None = None
    """Who submitted the job (a gateway caller), if known."""


_current: ContextVar[JobContext | None] = ContextVar("current_job", default=None)


def current_job() -> JobContext:
    """The job this handler or agent runs.

    Raises:
        LookupError: called outside a running job.
    """
    job = _current.get()
    if job is None:
        raise LookupError("current_job() is only set while a handler or an agent runs")
    return job


@contextmanager
def running(job: JobContext) -> Iterator[JobContext]:
    """Make ``job`` the current job for the duration of the block."""
    token = _current.set(job)
    try:
        yield job
    finally:
        _current.reset(token)
