"""The gateway's one door to our jobs: the public ``project`` API, awaited.

:class:`Jobs` is what the rest of the gateway needs (submit, resume, cancel, the job
log, the skills on offer); :class:`ProjectJobs` implements it on the public API
(``project.submit_task``, ``resume_job``, ``cancel_job``, ``offered_skills``) and on
the job log in ``project.core``. Those calls are synchronous Redis and broker I/O:
each runs in a thread of a small pool (:class:`Threads`), so the event loop never blocks.
Each of those threads may hold a connection of the process's one Redis client at once,
and redis-py's pool refuses a connection past its size ("Too many connections"), so the
pool stays under that size (:class:`ProjectJobs` checks it).

Waiting for new log events takes none of those threads. A stream (or a blocking request)
with nothing new to read hands its log to the process's one :class:`LogWaiter`: one
thread, on a Redis connection of its own, blocks in a single ``XREAD BLOCK`` over every
log some coroutine waits on (each from the earliest cursor waited on), and wakes the
coroutines whose log got something; they read on as any read does. Any number of open
streams costs that one thread and connection, and never holds up short calls. A wait on a
log the blocked ``XREAD`` does not cover wakes it up at once with an entry on the
process's own wake stream (``gateway:wake:{host}-{pid}-{random}``, one entry, expiring),
which every ``XREAD`` of the waiter watches too: the gateway's Redis user may not run
``CLIENT UNBLOCK``. A log whose wait ended without news stays in the ``XREAD`` a few
seconds (:data:`LINGER_S`), so a stream waiting again, as streams do every second or so,
neither wakes it nor reads first (the ``XREAD`` would have answered had there been
anything). A Redis outage is ridden out for :data:`LOG_RIDE_OUT_S`, as the process's
Redis client does (waits end on their own timeouts meanwhile); past that, waits fail (a
``redis`` ``ConnectionError``, which ends the request that waited; its task goes on)
until the waiter reaches Redis again.

Tests give the gateway a fake :class:`Jobs` instead.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar

from celery.result import AsyncResult
from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from project import app, cancel_job, offered_skills, resume_job, submit_signed
from project.core.constants import GATEWAY, KEY_JOB, KEY_JOB_LOG
from project.core.errors import ConfigurationError
from project.core.models import Skill
from project.core.runtime import get_runtime
from project.core.state.connections import client_from_url
from project.core.state.joblog import JobLogEvent
from project.gateway.mapping import JobEvent

__all__ = [
    "KEY_GATEWAY_WAKE",
    "LINGER_S",
    "LOG_BLOCK_S",
    "LOG_RIDE_OUT_S",
    "SHORT_CALL_THREADS",
    "WAKE_TTL_S",
    "CancelResult",
    "Jobs",
    "LogWaiter",
    "ProjectJobs",
    "Threads",
]

log = logging.getLogger("project.gateway")

T = TypeVar("T")

SHORT_CALL_THREADS: Final = 32
"""Threads for short calls (submit, resume, cancel, reads), each of which may hold a
connection of the process's Redis client: well under redis-py's default pool of 100."""
KEY_GATEWAY_WAKE: Final = "gateway:wake:"
"""``gateway:wake:{host}-{pid}-{random}``: a gateway process's wake stream (one entry)."""
LOG_BLOCK_S: Final = 5.0
"""Longest single ``XREAD BLOCK`` of the log waiter (a new wait wakes it sooner)."""
LOG_RIDE_OUT_S: Final = 30.0
"""How long the log waiter rides a Redis outage out before waits fail (about as long as
the process's Redis client retries a command, see ``connect_redis``)."""
WAKE_TTL_S: Final = 60.0
"""A wake stream expires this long after its last wake: a dead replica leaves nothing."""
LINGER_S: Final = 5.0
"""A stream whose last wait ended without news stays in the log waiter's ``XREAD`` this
long: the caller's next wait on it (a stream waits again at once) then needs no wake."""
_LOG_BATCH: Final = 100
_BACKOFF_FIRST_S: Final = 0.05
_BACKOFF_MAX_S: Final = 2.0
_LOG_EVERY_S: Final = 30.0


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


def _rank(cursor: str) -> tuple[int, int]:
    """A stream id as a sortable pair (``"5"`` is ``5-0``).

    Raises:
        ValueError: not a stream id.
    """
    ms, _, seq = cursor.partition("-")
    if not (ms + seq).isascii() or not ms.isdigit() or not (seq or "0").isdigit():
        raise ValueError(f"not a stream id: {cursor!r}")
    return int(ms), int(seq or 0)


@dataclass(eq=False, slots=True)
class _Wait:
    """One coroutine waiting for an entry after ``after`` on the stream ``key``."""

    key: str
    after: str
    rank: tuple[int, int]
    future: asyncio.Future[None]
    loop: asyncio.AbstractEventLoop


def _outage(error: BaseException) -> bool:
    """True for an error that says Redis is out of reach (not that it refused something)."""
    return isinstance(error, RedisConnectionError | RedisTimeoutError | OSError)


def _settle(futures: list[asyncio.Future[None]], error: BaseException | None) -> None:
    """In the waits' event loop: wake them (with ``error``, a failure)."""
    for future in futures:
        if future.done():  # timed out or canceled meanwhile
            continue
        if error is None:
            future.set_result(None)
            continue
        failure: RedisError
        if _outage(error):
            failure = RedisConnectionError(f"waiting on the job log failed: {error}")
        else:
            failure = RedisError(f"waiting on the job log failed: {error!r}")
        failure.__cause__ = error
        future.set_exception(failure)


class LogWaiter:
    """Every wait for new entries on Redis streams in this process, in one ``XREAD BLOCK``.

    One daemon thread (started with the first wait) on one Redis connection of its own
    loops on ``XREAD COUNT 1 BLOCK <ms> STREAMS <key>... <cursor>...`` over every stream a
    coroutine waits on (from the earliest cursor waited on, ``0-0`` for none) and this
    process's wake stream, and wakes every wait on a stream that got something (through
    its event loop's ``call_soon_threadsafe``); the waits then read what is new themselves.
    A wait the blocked ``XREAD`` does not cover (another stream, or an earlier cursor)
    adds an entry to the wake stream (in ``executor``, with ``wake_client``), so the next
    ``XREAD`` starts with it: at most one wake per blocked ``XREAD``. A stream whose last
    wait ended without news (timed out, canceled) stays in the ``XREAD`` for
    :data:`LINGER_S`, so waiting on it again needs no wake, and no read first
    (:meth:`covers`). Each loop costs time linear in the number of waits (and lingering
    streams); Redis handles thousands of streams in one ``XREAD`` (a few µs each).

    A Redis outage is ridden out for ``ride_out_s`` (waits end on their own timeouts);
    then, and on any other error, the waits registered fail, and the thread goes on,
    trying Redis again with a backoff (up to 2 s) until it answers. It never ends but on
    :meth:`close`; if it dies anyway, it logs why, fails the waits, and the next wait
    starts another.
    """

    def __init__(
        self,
        redis_url: str,
        wake_client: Redis,
        executor: Executor,
        *,
        block_s: float = LOG_BLOCK_S,
        ride_out_s: float = LOG_RIDE_OUT_S,
        wake_ttl_s: float = WAKE_TTL_S,
    ) -> None:
        """Wait on the Redis of ``redis_url`` (plain, TLS or Sentinel, as ``AGENTS_REDIS_URL``).

        Args:
            redis_url: Where the waiter's own connection goes.
            wake_client: The client that adds wakes (the process's shared client).
            executor: Where a wake runs (a short blocking call).
            block_s: Longest single ``XREAD BLOCK``.
            ride_out_s: How long a Redis outage is ridden out before waits fail.
            wake_ttl_s: The wake stream expires this long after its last wake.
        """
        self.wake_key = (
            f"{KEY_GATEWAY_WAKE}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        )
        """This process's wake stream."""
        self._url = redis_url
        self._wake_client = wake_client
        self._executor = executor
        self._block_ms = max(1, int(block_s * 1000))
        self._socket_timeout_s = block_s + 10.0
        self._ride_out_s = ride_out_s
        self._wake_ttl_ms = max(1, int(wake_ttl_s * 1000))
        self._lock = threading.Lock()
        self._waits: dict[str, set[_Wait]] = {}
        self._count = 0
        self._lingering: dict[str, tuple[str, tuple[int, int], float]] = {}
        """Streams whose last wait ended without news: cursor, rank, until when."""
        self._watching: dict[str, tuple[int, int]] | None = None
        """While an ``XREAD`` blocks: the earliest cursor it reads each stream from."""
        self._wake_sent = False
        self._work = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def waiting(self) -> int:
        """How many waits are registered now."""
        with self._lock:
            return self._count

    @property
    def streams(self) -> int:
        """On how many streams waits are registered now."""
        with self._lock:
            return len(self._waits)

    @property
    def blocked(self) -> bool:
        """True while the thread blocks in an ``XREAD`` (for tests)."""
        with self._lock:
            return self._watching is not None

    async def wait(self, key: str, after: str | None, timeout_s: float) -> bool:
        """Wait until the stream ``key`` may have an entry after the cursor ``after``.

        Returns True once it may (read it to see: another wait's entry wakes every wait
        on the stream), False after ``timeout_s`` without one. A canceled wait is dropped.

        Raises:
            ValueError: ``after`` is not a stream id.
            redis.exceptions.ConnectionError: Redis is out of reach (for longer than the
                ride-out), or the waiter is closed.
            redis.exceptions.RedisError: Redis refused the ``XREAD``.
        """
        cursor = after or "0-0"
        loop = asyncio.get_running_loop()
        wait = _Wait(key, cursor, _rank(cursor), loop.create_future(), loop)
        self._add(wait)
        try:
            async with asyncio.timeout(timeout_s) as deadline:
                await wait.future
            return True
        except TimeoutError:
            if deadline.expired():
                return False
            raise
        finally:
            self._remove(wait)

    def _add(self, wait: _Wait) -> None:
        with self._lock:
            if self._closed.is_set():
                raise RedisConnectionError("the gateway's log waiter is closed")
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="gateway-log-waiter", daemon=True
                )
                self._thread.start()
            self._waits.setdefault(wait.key, set()).add(wait)
            self._lingering.pop(wait.key, None)
            self._count += 1
            self._work.set()
            watching = self._watching
            wake = (
                watching is not None
                and not self._wake_sent
                and (wait.key not in watching or wait.rank < watching[wait.key])
            )
            if wake:
                self._wake_sent = True
        if wake:
            self._send_wake()

    def _remove(self, wait: _Wait) -> None:
        with self._lock:
            waits = self._waits.get(wait.key)
            if waits is None or wait not in waits:
                return  # woken: the thread took it out
            waits.discard(wait)
            self._count -= 1
            if not waits:
                del self._waits[wait.key]
                until = time.monotonic() + LINGER_S
                lingering = self._lingering.get(wait.key)
                if lingering is None or wait.rank <= lingering[1]:
                    self._lingering[wait.key] = (wait.after, wait.rank, until)
                else:
                    self._lingering[wait.key] = (*lingering[:2], until)

    def covers(self, key: str, after: str | None) -> bool:
        """True if the blocked ``XREAD`` reads the stream ``key`` from ``after`` or before:
        then it had nothing after ``after`` when it started, and a wait on it now is woken
        by anything that came since (so there is no need to read before waiting)."""
        try:
            rank = _rank(after or "0-0")
        except ValueError:
            return False
        with self._lock:
            watching = self._watching
            return watching is not None and key in watching and watching[key] <= rank

    def _take_all(self) -> list[_Wait]:
        """Unregister every wait (the lock is held)."""
        taken = [w for waits in self._waits.values() for w in waits]
        self._waits.clear()
        self._lingering.clear()
        self._count = 0
        return taken

    # -- waking the thread -------------------------------------------------------------

    def _send_wake(self) -> None:
        try:
            self._executor.submit(self._wake)
        except RuntimeError:  # the executor is shut down: the gateway is stopping
            log.debug("no wake for the log waiter: its executor is shut down")

    def _wake(self) -> None:
        try:
            pipe = self._wake_client.pipeline(transaction=False)
            pipe.xadd(self.wake_key, {"w": "1"}, maxlen=1, approximate=False)
            pipe.pexpire(self.wake_key, self._wake_ttl_ms)
            pipe.execute()
        except Exception:
            # The new wait is watched from the next XREAD on (within block_s).
            log.warning("could not wake the gateway's log waiter", exc_info=True)
            with self._lock:
                self._wake_sent = False

    # -- the thread --------------------------------------------------------------------

    def _connect(self) -> Redis:
        """The thread's own client (it connects on its first command)."""
        return client_from_url(
            self._url,
            socket_connect_timeout=5,
            socket_timeout=self._socket_timeout_s,
            socket_keepalive=True,
            health_check_interval=15,
            retry=Retry(NoBackoff(), 0),  # the loop tries again, and fails waits meanwhile
        )

    def _watch(self) -> dict[Any, Any] | None:
        """The streams and cursors of the next ``XREAD``; None if nothing waits."""
        with self._lock:
            self._wake_sent = False
            if not self._waits:
                self._lingering.clear()  # nothing to wake: the next wait wakes the thread
                self._watching = None
                self._work.clear()
                return None
            streams: dict[Any, Any] = {}
            watching: dict[str, tuple[int, int]] = {}
            for key, waits in self._waits.items():
                first = min(waits, key=lambda w: w.rank)
                streams[key] = first.after
                watching[key] = first.rank
            now = time.monotonic()
            for key, (after, rank, until) in list(self._lingering.items()):
                if until <= now:
                    del self._lingering[key]
                else:
                    streams[key] = after
                    watching[key] = rank
            self._watching = watching
            return streams

    def _unwatch(self) -> None:
        with self._lock:
            self._watching = None

    def _run(self) -> None:
        reader: Redis | None = None
        try:
            reader = self._connect()
            self._serve(reader)
        except BaseException:
            log.critical(
                "the gateway's log waiter stopped; its waits fail, the next wait starts it again",
                exc_info=True,
            )
            with self._lock:
                self._thread = None
                self._watching = None
                taken = self._take_all()
            self._wake_all(taken, RedisConnectionError("the gateway's log waiter stopped"))
        finally:
            if reader is not None:
                self._clean_up(reader)

    def _serve(self, reader: Redis) -> None:
        wake_cursor = "0-0"
        failures = 0
        down_since: float | None = None
        logged_at = float("-inf")
        while not self._closed.is_set():
            streams = self._watch()
            if streams is None:  # nothing to wait on: sleep until a wait comes
                self._work.wait(self._block_ms / 1000)
                continue
            streams[self.wake_key] = wake_cursor
            try:
                reply = reader.xread(streams, count=1, block=self._block_ms)
            except Exception as error:
                self._unwatch()
                if self._closed.is_set():
                    return
                failures += 1
                wake_cursor = "0-0"  # the wake stream may be gone (or older, after a failover)
                now = time.monotonic()
                if _outage(error):
                    down_since = now if down_since is None else down_since
                    out_for = now - down_since
                else:
                    out_for = float("inf")  # Redis refused the XREAD: no point in waiting
                if out_for >= self._ride_out_s:
                    with self._lock:
                        taken = self._take_all()
                    self._wake_all(taken, error)
                if now - logged_at >= _LOG_EVERY_S:
                    logged_at = now
                    log.warning(
                        "the gateway's log waiter cannot read Redis (%r); it tries again "
                        "with a backoff (waits fail if Redis stays out of reach for %.0f s, "
                        "at once if it refused)",
                        error,
                        self._ride_out_s,
                        extra={"failures": failures},
                    )
                ceiling = min(_BACKOFF_MAX_S, _BACKOFF_FIRST_S * 2.0 ** min(failures - 1, 30))
                self._closed.wait(random.uniform(ceiling / 2, ceiling))
                continue
            if failures:
                log.info(
                    "the gateway's log waiter reads Redis again",
                    extra={"failures": failures},
                )
                failures, down_since, logged_at = 0, None, float("-inf")
            wake_cursor = self._take_ready(reply, wake_cursor)

    def _take_ready(self, reply: Any, wake_cursor: str) -> str:
        """Wake the waits on the streams an ``XREAD`` answered with; the wake stream's
        cursor after it."""
        rows: Iterable[tuple[str, list[tuple[str, Any]]]]
        rows = reply.items() if isinstance(reply, dict) else (reply or [])  # RESP3 or 2
        ready: list[_Wait] = []
        with self._lock:
            self._watching = None
            for key, entries in rows:
                if key == self.wake_key:
                    if entries:
                        wake_cursor = entries[-1][0]
                    continue
                self._lingering.pop(key, None)
                waits = self._waits.pop(key, None)
                if waits:
                    ready.extend(waits)
                    self._count -= len(waits)
        self._wake_all(ready, None)
        return wake_cursor

    @staticmethod
    def _wake_all(waits: list[_Wait], error: BaseException | None) -> None:
        """Settle the futures of ``waits`` in their event loops (one call per loop)."""
        by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        for wait in waits:
            by_loop.setdefault(wait.loop, []).append(wait.future)
        for loop, futures in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, futures, error)
            except RuntimeError:  # that loop is closed: nobody waits there any more
                continue

    def _clean_up(self, reader: Redis) -> None:
        if self._closed.is_set():
            try:
                reader.delete(self.wake_key)
            except Exception:  # it expires anyway
                log.debug("could not delete the wake stream", exc_info=True)
        reader.close()

    def close(self, wait_s: float = 0.0) -> None:
        """Stop the thread: pending waits fail, new ones are refused.

        Returns at once, or once the thread has ended (up to ``wait_s``).
        """
        with self._lock:
            if self._closed.is_set():
                return
            self._closed.set()
            self._work.set()
            taken = self._take_all()
            blocked = self._watching is not None
            thread = self._thread
        self._wake_all(taken, RedisConnectionError("the gateway is shutting down"))
        if blocked:
            self._send_wake()
        if thread is not None and wait_s > 0:
            thread.join(wait_s)


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
