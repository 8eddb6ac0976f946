"""The gateway's one door to our jobs: the public ``project`` API, awaited.

:class:`Jobs` is what the rest of the gateway needs (submit, resume, cancel, the job
log, the skills on offer); :class:`ProjectJobs` implements it on the public API
(``project.submit_task``, ``resume_job``, ``cancel_job``, ``offered_skills``) and on
the job log in ``project.core``. Those calls are synchronous Redis and broker I/O:
each runs in a thread of a small pool (:class:`Threads`), so the event loop never blocks.
Each of those threads may hold a connection of the process's one Redis client at once,
and redis-py's pool refuses a connection past its size ("Too many connections"), so the
pool stays under that size (:class:`ProjectJobs` checks it).

Waiting for new log events takes none of those threads: every wait of the process goes
through its one :class:`~project.gateway.log_waiter.LogWaiter`.

Tests give the gateway a fake :class:`Jobs` instead.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar

from celery.result import AsyncResult
from redis.exceptions import ConnectionError as RedisConnectionError

from project import app, cancel_job, offered_skills, resume_job, submit_signed
from project.core.constants import GATEWAY, KEY_JOB, KEY_JOB_LOG
from project.core.errors import ConfigurationError
from project.core.models import Skill
from project.core.runtime import get_runtime
from project.core.state.joblog import JobLogEvent
from project.gateway.log_waiter import LOG_BLOCK_S, LOG_RIDE_OUT_S, LogWaiter
from project.gateway.mapping import JobEvent

__all__ = [
    "SHORT_CALL_THREADS",
    "CancelResult",
    "Jobs",
    "ProjectJobs",
    "Threads",
]

T = TypeVar("T")

SHORT_CALL_THREADS: Final = 32
"""Threads for short calls (submit, resume, cancel, reads), each of which may hold a
connection of the process's Redis client: well under redis-py's default pool of 100."""
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
    """The gateway's threads for blocking I/O: a pool for short calls, and the log waiter."""

    def __init__(
        self,
        short_calls: int = SHORT_CALL_THREADS,
        *,
        log_block_s: float = LOG_BLOCK_S,
        log_ride_out_s: float = LOG_RIDE_OUT_S,
    ) -> None:
        """``short_calls`` threads for short calls, and the log waiter's settings."""
        self.size = short_calls
        """How many threads may run calls at once (each may hold a Redis connection of
        the process's client; the log waiter has a connection of its own)."""
        self._short = ThreadPoolExecutor(short_calls, thread_name_prefix="gateway-call")
        self._log_block_s = log_block_s
        self._log_ride_out_s = log_ride_out_s
        self._lock = threading.Lock()
        self._waiter: LogWaiter | None = None
        self._closed = False

    @property
    def log_waiter(self) -> LogWaiter:
        """The process's log waiter, on the runtime's Redis (made on first use; its
        thread starts with the first wait)."""
        with self._lock:
            if self._waiter is None:
                if self._closed:
                    raise RedisConnectionError("the gateway's threads are closed")
                runtime = get_runtime()
                self._waiter = LogWaiter(
                    runtime.settings.redis_url,
                    runtime.redis,
                    self._short,
                    block_s=self._log_block_s,
                    ride_out_s=self._log_ride_out_s,
                )
            return self._waiter

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a short blocking call in a thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._short, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        """Stop the log waiter (its waits fail) and the pool (calls in flight finish;
        queued ones are dropped)."""
        with self._lock:
            self._closed = True
            waiter = self._waiter
        if waiter is not None:
            waiter.close()
        self._short.shutdown(wait=False, cancel_futures=True)


def _job_event(event: JobLogEvent) -> JobEvent:
    return JobEvent(id=event.id, ms=event.ms, kind=event.kind, data=event.data)


class ProjectJobs:
    """:class:`Jobs` on the public ``project`` API and the job log in Redis."""

    def __init__(self, threads: Threads) -> None:
        """Use ``threads`` for the blocking calls and log waits.

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

    async def wait_log(self, job_id: str, after: str | None, timeout_s: float) -> list[JobEvent]:
        """See :meth:`Jobs.wait_log`: reads, and while there is nothing, waits for the log
        to grow (:class:`LogWaiter`) and reads again. Returns [] on timeout.

        The first read is left out when the log waiter's blocked ``XREAD`` covers the log
        from ``after`` on (a stream waiting again after a wait that timed out): nothing
        was there when it started, and anything since wakes the wait.

        Raises:
            redis.exceptions.ConnectionError: Redis is out of reach (see the module
                docstring).
        """
        waiter = self._threads.log_waiter
        key = KEY_JOB_LOG + job_id
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        if timeout_s <= 0 or not waiter.covers(key, after):
            events = await self._call(self._read_all, job_id, after)
            if events:
                return events
        while True:
            left = deadline - loop.time()
            if left <= 0 or not await waiter.wait(key, after, left):
                return []
            events = await self._call(self._read_all, job_id, after)
            if events:
                return events

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
