"""The gateway's one door to our jobs: the public ``project`` API, awaited.

:class:`Jobs` is what the rest of the gateway needs (submit, resume, cancel, the job
log, the skills on offer); :class:`ProjectJobs` implements it on the public API
(``project.submit_task``, ``resume_job``, ``cancel_job``, ``offered_skills``) and on
the job log in ``project.core``. Those calls are synchronous Redis and broker I/O:
each runs in a thread pool, so the event loop never blocks; waiting for new log events
(``XREAD BLOCK``) has a pool of its own, so many open streams cannot starve short calls.

Every one of those threads may hold a connection of the process's one Redis client at
once (a blocked ``XREAD`` holds its connection for the whole wait), and redis-py's pool
refuses a connection past its size ("Too many connections"). So the two pools together
stay under that size (:class:`ProjectJobs` checks it), and streams beyond
:data:`WAIT_THREADS` take turns: each wait is bounded, and shorter while others queue.
Tests give the gateway a fake :class:`Jobs` instead.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar

from celery.result import AsyncResult

from project import app, cancel_job, offered_skills, resume_job, submit_signed
from project.core.constants import GATEWAY, KEY_JOB, KEY_JOB_LOG
from project.core.errors import ConfigurationError
from project.core.models import Skill
from project.core.runtime import get_runtime
from project.core.state.joblog import JobLogEvent
from project.gateway.mapping import JobEvent

__all__ = [
    "CROWDED_WAIT_S",
    "SHORT_CALL_THREADS",
    "WAIT_THREADS",
    "CancelResult",
    "Jobs",
    "ProjectJobs",
    "Threads",
]

T = TypeVar("T")

SHORT_CALL_THREADS: Final = 32
"""Threads for short calls (submit, resume, cancel, reads)."""
WAIT_THREADS: Final = 48
"""Threads blocked in ``XREAD`` for new log events: at most this many streams wait at once;
more wait their turn (each wait is at most a second, :data:`CROWDED_WAIT_S` while others
queue). With :data:`SHORT_CALL_THREADS`, well under redis-py's default pool of 100
connections, which every thread of the gateway shares."""
CROWDED_WAIT_S: Final = 0.1
"""Longest single ``XREAD`` wait while more streams wait than there are wait threads, so
that they take turns quickly."""
_LOG_BATCH: Final = 100


@dataclass(frozen=True, slots=True)
class CancelResult:
    """What canceling a job did."""

    canceled: bool
    """False: the job was final already (``status``), nothing changed."""
    status: str
    message: str = ""


class Jobs(Protocol):
    """What the gateway asks of the job system. Errors are ``project.core.errors`` types."""

    async def offered_skills(self) -> list[Skill]:
        """The task types live workers offer now."""
        ...

    async def submit(
        self,
        job_id: str,
        task_type: str,
        payload: dict[str, Any],
        *,
        a2a_message: dict[str, Any],
        owner: str,
    ) -> None:
        """Submit a job under ``job_id`` (its record appears once the coordinator takes it)."""
        ...

    async def resume(self, job_id: str, value: Any, *, a2a_message: dict[str, Any]) -> None:
        """Answer a job waiting for input (raises JobNotWaitingError, JobNotFoundError)."""
        ...

    async def cancel(self, job_id: str) -> CancelResult:
        """Cancel a job wherever it is (raises JobNotFoundError)."""
        ...

    async def read_log(self, job_id: str, after: str | None) -> list[JobEvent]:
        """Every event of the job's log after the cursor ``after``, oldest first."""
        ...

    async def wait_log(self, job_id: str, after: str | None, timeout_s: float) -> list[JobEvent]:
        """Events after ``after``; waits up to ``timeout_s`` for one if there are none yet."""
        ...

    async def intake_refusal(self, job_id: str) -> dict[str, str] | None:
        """The error of a submit the coordinator refused before recording a job, if any."""
        ...

    async def ping(self) -> bool:
        """True if Redis answers."""
        ...


class Threads:
    """The gateway's thread pools for blocking I/O: short calls, and log waits."""

    def __init__(self, short_calls: int = SHORT_CALL_THREADS, waits: int = WAIT_THREADS) -> None:
        self.size = short_calls + waits
        """How many threads may run calls at once (each may hold a Redis connection)."""
        self._wait_threads = waits
        self._waiting = 0
        self._short = ThreadPoolExecutor(short_calls, thread_name_prefix="gateway-call")
        self._waits = ThreadPoolExecutor(waits, thread_name_prefix="gateway-wait")

    @property
    def crowded(self) -> bool:
        """True while more waits are running or queued than there are wait threads."""
        return self._waiting > self._wait_threads

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a short blocking call in a thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._short, functools.partial(fn, *args, **kwargs))

    async def wait(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a call that blocks waiting (``XREAD BLOCK``) in a thread of its own pool."""
        loop = asyncio.get_running_loop()
        self._waiting += 1
        try:
            return await loop.run_in_executor(self._waits, functools.partial(fn, *args, **kwargs))
        finally:
            self._waiting -= 1

    def close(self) -> None:
        """Stop the pools (calls in flight finish; queued ones are dropped)."""
        self._short.shutdown(wait=False, cancel_futures=True)
        self._waits.shutdown(wait=False, cancel_futures=True)


def _job_event(event: JobLogEvent) -> JobEvent:
    return JobEvent(id=event.id, ms=event.ms, kind=event.kind, data=event.data)


class ProjectJobs:
    """:class:`Jobs` on the public ``project`` API and the job log in Redis."""

    def __init__(self, threads: Threads) -> None:
        """Use ``threads`` for the blocking calls.

        Raises:
            ConfigurationError: ``threads`` could hold more Redis connections at once
                than the process's Redis client has (see the module docstring).
        """
        pool_size = get_runtime().redis.connection_pool.max_connections
        if threads.size >= pool_size:
            raise ConfigurationError(
                f"the gateway's {threads.size} threads could hold more Redis connections "
                f"at once than its client's pool has ({pool_size})"
            )
        self._threads = threads

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await self._threads.call(fn, *args, **kwargs)

    async def offered_skills(self) -> list[Skill]:
        """See :meth:`Jobs.offered_skills`."""
        return await self._call(offered_skills)

    async def submit(
        self,
        job_id: str,
        task_type: str,
        payload: dict[str, Any],
        *,
        a2a_message: dict[str, Any],
        owner: str,
    ) -> None:
        """See :meth:`Jobs.submit`. Signed by the gateway (``submit_signed``)."""
        await self._call(
            submit_signed,
            task_type,
            payload,
            sender=GATEWAY,
            task_id=job_id,
            a2a_message=a2a_message,
            owner=owner,
        )

    async def resume(self, job_id: str, value: Any, *, a2a_message: dict[str, Any]) -> None:
        """See :meth:`Jobs.resume`. Signed by the gateway."""
        await self._call(resume_job, job_id, value, a2a_message=a2a_message, sender=GATEWAY)

    async def cancel(self, job_id: str) -> CancelResult:
        """See :meth:`Jobs.cancel`."""
        outcome = await self._call(cancel_job, job_id)
        return CancelResult(outcome.canceled, outcome.status.value, outcome.message)

    @staticmethod
    def _read_all(job_id: str, after: str | None) -> list[JobEvent]:
        joblog = get_runtime().joblog
        events: list[JobEvent] = []
        while True:
            batch = joblog.read(job_id, after, count=_LOG_BATCH)
            events.extend(_job_event(e) for e in batch)
            if len(batch) < _LOG_BATCH:
                return events
            after = batch[-1].id

    async def read_log(self, job_id: str, after: str | None) -> list[JobEvent]:
        """See :meth:`Jobs.read_log`."""
        return await self._call(self._read_all, job_id, after)

    def _wait(self, job_id: str, after: str | None, timeout_s: float) -> list[JobEvent]:
        events = self._read_all(job_id, after)
        if events or timeout_s <= 0:
            return events
        if self._threads.crowded:  # others wait for a thread: give this one back soon
            timeout_s = min(timeout_s, CROWDED_WAIT_S)
        get_runtime().redis.xread(
            {KEY_JOB_LOG + job_id: after or "0-0"}, count=1, block=max(1, int(timeout_s * 1000))
        )
        return self._read_all(job_id, after)

    async def wait_log(self, job_id: str, after: str | None, timeout_s: float) -> list[JobEvent]:
        """See :meth:`Jobs.wait_log`."""
        return await self._threads.wait(self._wait, job_id, after, timeout_s)

    @staticmethod
    def _refusal(job_id: str) -> dict[str, str] | None:
        if get_runtime().redis.exists(KEY_JOB + job_id):
            return None  # recorded: its log tells the rest
        result = AsyncResult(job_id, app=app)
        if result.state != "FAILURE":
            return None
        error = result.result
        return {"type": type(error).__name__, "message": str(error)}

    async def intake_refusal(self, job_id: str) -> dict[str, str] | None:
        """See :meth:`Jobs.intake_refusal`."""
        return await self._call(self._refusal, job_id)

    async def ping(self) -> bool:
        """See :meth:`Jobs.ping`."""
        try:
            return bool(await self._call(get_runtime().redis.ping))
        except Exception:
            return False
