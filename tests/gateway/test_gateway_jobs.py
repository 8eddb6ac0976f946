"""The gateway's door to the job system on real Redis: any number of streams waiting on
job logs at once share one waiter thread (one ``XREAD BLOCK`` on a connection of its
own), never the short calls' threads or the process's Redis client."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from redis import Redis
from redis.exceptions import RedisError

from project.core.constants import KEY_GATEWAY_WAKE, KEY_JOB_LOG
from project.core.errors import ConfigurationError
from project.core.runtime import get_runtime
from project.core.state.connections import connect_redis
from project.gateway.jobs import SHORT_CALL_THREADS, ProjectJobs, Threads
from project.gateway.log_waiter import LogWaiter
from project.gateway.mapping import JobEvent
from project.local.embedded_redis import EmbeddedRedis

T = TypeVar("T")

ENTRY: dict[Any, Any] = {"k": "custom", "ms": "1", "d": '{"n": 1}'}
"""A job log entry as the tiers append it (``JobLog.read`` parses it)."""


@pytest.fixture
def runtime_redis(redis_server: EmbeddedRedis) -> Iterator[Redis]:
    """The runtime's own client (database 0 of the session's Redis), as the gateway uses it."""
    del redis_server
    yield get_runtime().redis


async def until(condition: Callable[[], bool], timeout_s: float = 10) -> None:
    """Wait (polling) until ``condition()`` holds."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def timed(awaitable: Awaitable[T]) -> tuple[T, float]:
    """What ``awaitable`` returns, and how long it took (s)."""
    started = time.monotonic()
    result = await awaitable
    return result, time.monotonic() - started


def test_the_default_pool_stays_under_the_redis_connection_pool() -> None:
    pool_size = get_runtime().redis.connection_pool.max_connections
    assert pool_size > SHORT_CALL_THREADS
    with pytest.raises(ConfigurationError, match="Redis connections"):
        ProjectJobs(Threads(short_calls=pool_size))


def test_many_more_concurrent_log_waits_than_threads_all_succeed(runtime_redis: Redis) -> None:
    """200 streams waiting at once (more than redis-py's 100 connections): none fails, and
    events written meanwhile reach them."""
    waits = 200
    threads = Threads()
    jobs = ProjectJobs(threads)
    ids = [f"pool-{uuid.uuid4().hex}" for _ in range(waits)]
    try:

        async def go() -> None:
            async def follow(job_id: str) -> int:
                after = None
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    events = await jobs.wait_log(job_id, after, 1.0)
                    if events:
                        return len(events)
                return 0

            followers = asyncio.gather(*(follow(i) for i in ids))
            await asyncio.sleep(0.5)  # every wait is in XREAD BLOCK
            for job_id in ids:
                runtime_redis.xadd(KEY_JOB_LOG + job_id, ENTRY)
            assert await asyncio.wait_for(followers, 30) == [1] * waits

        asyncio.run(go())
    finally:
        threads.close()
        runtime_redis.delete(*(KEY_JOB_LOG + i for i in ids))


def test_500_waits_on_500_logs_share_one_waiter_and_short_calls_go_on(
    runtime_redis: Redis,
) -> None:
    """500 ``wait_log`` calls on 500 job logs at once each get the event appended to their
    log while they wait; a short call made meanwhile is not held up by them."""
    waits = 500
    threads = Threads()
    jobs = ProjectJobs(threads)
    ids = [f"many-{uuid.uuid4().hex}" for _ in range(waits)]
    other = f"many-{uuid.uuid4().hex}"
    runtime_redis.xadd(KEY_JOB_LOG + other, ENTRY)
    try:

        async def go() -> None:
            waiter = threads.log_waiter
            waiting = [asyncio.create_task(jobs.wait_log(i, None, 60)) for i in ids]
            await until(lambda: waiter.waiting == waits and waiter.blocked, 30)
            assert waiter.streams == waits
            # A short call while 500 streams wait: it has the pool to itself.
            events, took = await timed(jobs.read_log(other, None))
            assert [e.data for e in events] == [{"n": 1}]
            assert took < 5
            assert not any(w.done() for w in waiting)
            appended = {}
            for job_id in ids:
                appended[job_id] = runtime_redis.xadd(KEY_JOB_LOG + job_id, ENTRY)
            results = await asyncio.wait_for(asyncio.gather(*waiting), 30)
            for job_id, result in zip(ids, results, strict=True):
                assert [(e.id, e.kind, e.data) for e in result] == [
                    (appended[job_id], "custom", {"n": 1})
                ]
            assert waiter.waiting == 0 and waiter.streams == 0

        asyncio.run(go())
    finally:
        threads.close()
        runtime_redis.delete(*(KEY_JOB_LOG + i for i in [*ids, other]))


def test_a_new_wait_wakes_the_blocked_xread(runtime_redis: Redis) -> None:
    """With the waiter blocked in a 30 s ``XREAD`` on one log, a wait on another log is
    watched at once (the wake stream), not after the block ends."""
    threads = Threads(log_block_s=30)
    jobs = ProjectJobs(threads)
    first, second = (f"wake-{uuid.uuid4().hex}" for _ in range(2))
    try:

        async def go() -> None:
            waiter = threads.log_waiter
            blocked = asyncio.create_task(jobs.wait_log(first, None, 60))
            await until(lambda: waiter.waiting == 1 and waiter.blocked)
            await asyncio.sleep(0.3)  # the XREAD is in Redis, blocking
            started = time.monotonic()
            woken = asyncio.create_task(jobs.wait_log(second, None, 60))
            await until(lambda: waiter.waiting == 2)
            appended = runtime_redis.xadd(KEY_JOB_LOG + second, ENTRY)
            events = await asyncio.wait_for(woken, 10)
            assert [e.id for e in events] == [appended]
            assert time.monotonic() - started < 5  # far from the 30 s block
            # The wake stream: this process's, one entry, expiring.
            assert waiter.wake_key.startswith(KEY_GATEWAY_WAKE)
            assert runtime_redis.xlen(waiter.wake_key) == 1
            assert 0 < runtime_redis.pttl(waiter.wake_key) <= 60_000
            assert not blocked.done()
            waiter.close(wait_s=10)
            with pytest.raises(RedisError):
                await blocked  # closing fails the waits left
            await until(lambda: not runtime_redis.exists(waiter.wake_key))

        asyncio.run(go())
    finally:
        threads.close()
        runtime_redis.delete(KEY_JOB_LOG + first, KEY_JOB_LOG + second)


def test_a_timed_out_or_canceled_wait_leaves_nothing_behind(
    runtime_redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads = Threads()
    jobs = ProjectJobs(threads)
    job_id = f"gone-{uuid.uuid4().hex}"
    key = KEY_JOB_LOG + job_id
    reads: list[str | None] = []
    read_all = ProjectJobs._read_all

    def counted(job_id: str, after: str | None) -> list[JobEvent]:
        reads.append(after)
        return read_all(job_id, after)

    monkeypatch.setattr(ProjectJobs, "_read_all", staticmethod(counted))
    try:

        async def go() -> None:
            waiter = threads.log_waiter
            assert await jobs.wait_log(job_id, None, 0.3) == []
            assert waiter.waiting == 0 and waiter.streams == 0
            assert reads == [None]
            # The stream stays in the blocked XREAD a while: waiting on it again needs
            # neither a wake nor a read first (nothing was there when the XREAD began).
            assert waiter.covers(key, None) and waiter.blocked
            assert await jobs.wait_log(job_id, None, 0.3) == []
            assert reads == [None]
            canceled = asyncio.create_task(jobs.wait_log(job_id, None, 60))
            await until(lambda: waiter.waiting == 1)
            canceled.cancel()  # the client went away
            with pytest.raises(asyncio.CancelledError):
                await canceled
            assert waiter.waiting == 0 and waiter.streams == 0
            with pytest.raises(ValueError, match="stream id"):
                await waiter.wait(KEY_JOB_LOG + job_id, "not-a-cursor", 1)
            assert waiter.waiting == 0
            # The log after all that: a wait gets what came while nobody waited (whether
            # the XREAD has answered for it yet or not), and from its cursor what comes next.
            first = runtime_redis.xadd(KEY_JOB_LOG + job_id, ENTRY)
            assert [e.id for e in await jobs.wait_log(job_id, None, 1)] == [first]
            later = asyncio.create_task(jobs.wait_log(job_id, str(first), 30))
            await until(lambda: waiter.waiting == 1)
            second = runtime_redis.xadd(KEY_JOB_LOG + job_id, ENTRY)
            assert [e.id for e in await asyncio.wait_for(later, 10)] == [second]
            assert waiter.waiting == 0

        asyncio.run(go())
    finally:
        threads.close()
        runtime_redis.delete(KEY_JOB_LOG + job_id)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A redis-server of this test's own, to stop and start (the session's is shared)."""
    server = EmbeddedRedis(tmp_path / "redis", appendonly=False).start()
    yield server
    server.stop()


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(4, thread_name_prefix="test-call")
    yield pool
    pool.shutdown(wait=False, cancel_futures=True)


def test_redis_gone_fails_waits_and_the_waiter_recovers(
    own_redis: EmbeddedRedis, executor: ThreadPoolExecutor
) -> None:
    """Redis killed under a blocked wait: the wait fails (a redis ConnectionError, once the
    ride-out is over, here at once); once Redis is back, the same thread serves new waits."""
    client = connect_redis(own_redis.url)
    waiter = LogWaiter(own_redis.url, client, executor, block_s=5, ride_out_s=0)
    key = KEY_JOB_LOG + "down"

    async def go() -> None:
        waiting = asyncio.create_task(waiter.wait(key, None, 60))
        await until(lambda: waiter.blocked)
        thread = waiter._thread
        own_redis.kill()
        with pytest.raises(RedisError, match="waiting on the job log failed"):
            await asyncio.wait_for(waiting, 20)
        assert waiter.waiting == 0
        # Meanwhile, waits fail too (no Redis), and the thread lives on.
        with pytest.raises(RedisError):
            await asyncio.wait_for(waiter.wait(key, None, 60), 20)
        own_redis.start()
        back = asyncio.create_task(waiter.wait(key, None, 60))
        await until(lambda: waiter.blocked, 20)
        client.xadd(key, ENTRY)
        assert await asyncio.wait_for(back, 20) is True
        assert waiter._thread is thread and thread is not None and thread.is_alive()

    try:
        asyncio.run(go())
    finally:
        waiter.close(wait_s=10)
        client.close()


def test_a_short_redis_restart_is_ridden_out(
    own_redis: EmbeddedRedis, executor: ThreadPoolExecutor
) -> None:
    """Within the ride-out, a Redis restart does not fail a wait: it gets the event
    appended once Redis is back."""
    client = connect_redis(own_redis.url)
    waiter = LogWaiter(own_redis.url, client, executor, block_s=5)
    key = KEY_JOB_LOG + "restart"

    async def go() -> None:
        waiting = asyncio.create_task(waiter.wait(key, None, 60))
        await until(lambda: waiter.blocked)
        own_redis.restart()
        await asyncio.sleep(0.5)
        assert not waiting.done()
        client.xadd(key, ENTRY)
        assert await asyncio.wait_for(waiting, 20) is True

    try:
        asyncio.run(go())
    finally:
        waiter.close(wait_s=10)
        client.close()
