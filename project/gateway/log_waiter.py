"""One ``XREAD BLOCK`` for every wait on a job log in the gateway's process.

A gateway stream (or a blocking request) with nothing new to read hands its log to the
process's one :class:`LogWaiter`: one thread, on a Redis connection of its own, blocks
in a single ``XREAD BLOCK`` over every log some coroutine waits on (each from the
earliest cursor waited on), and wakes the coroutines whose log got something; they read
on as any read does. Any number of open streams costs that one thread and connection,
and never holds up the gateway's short calls (:class:`project.gateway.jobs.Threads`). A
wait on a log the blocked ``XREAD`` does not cover wakes it up at once with an entry on
the process's own wake stream (``gateway:wake:{host}-{pid}-{random}``, one entry,
expiring), which every ``XREAD`` of the waiter watches too: the gateway's Redis user may
not run ``CLIENT UNBLOCK``. A log whose wait ended without news stays in the ``XREAD`` a
few seconds (:data:`LINGER_S`), so a stream waiting again, as streams do every second or
so, neither wakes it nor reads first (the ``XREAD`` would have answered had there been
anything). A Redis outage is ridden out for :data:`LOG_RIDE_OUT_S`, as the process's
Redis client does (waits end on their own timeouts meanwhile); past that, waits fail (a
``redis`` ``ConnectionError``, which ends the request that waited; its task goes on)
until the waiter reaches Redis again.

:class:`project.gateway.jobs.ProjectJobs` waits through it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Final

from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from project.core.constants import KEY_GATEWAY_WAKE
from project.core.state.connections import client_from_url

__all__ = [
    "LINGER_S",
    "LOG_BLOCK_S",
    "LOG_RIDE_OUT_S",
    "WAKE_TTL_S",
    "LogWaiter",
]

log = logging.getLogger("project.gateway")

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
_BACKOFF_FIRST_S: Final = 0.05
_BACKOFF_MAX_S: Final = 2.0
_LOG_EVERY_S: Final = 30.0


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
