"""The gateway's door to the job system on real Redis: many streams waiting on job logs
at once share the process's one Redis client without running out of connections."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import pytest
from redis import Redis

from project.core.constants import KEY_JOB_LOG
from project.core.errors import ConfigurationError
from project.core.runtime import get_runtime
from project.gateway.jobs import (
    SHORT_CALL_THREADS,
    WAIT_THREADS,
    ProjectJobs,
    Threads,
)
from project.local.embedded_redis import EmbeddedRedis


@pytest.fixture
def runtime_redis(redis_server: EmbeddedRedis) -> Iterator[Redis]:
    """The runtime's own client (database 0 of the session's Redis), as the gateway uses it."""
    del redis_server
    yield get_runtime().redis


def test_the_default_pools_stay_under_the_redis_connection_pool() -> None:
    pool_size = get_runtime().redis.connection_pool.max_connections
    assert pool_size > SHORT_CALL_THREADS + WAIT_THREADS
    with pytest.raises(ConfigurationError, match="Redis connections"):
        ProjectJobs(Threads(short_calls=32, waits=pool_size))


def test_many_more_concurrent_log_waits_than_threads_all_succeed(runtime_redis: Redis) -> None:
    """200 streams waiting at once (more than redis-py's 100 connections): none fails, and
    events written meanwhile reach the waits that take turns."""
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
            await asyncio.sleep(0.5)  # every wait is in (or queued for) XREAD BLOCK
            for job_id in ids:
                runtime_redis.xadd(KEY_JOB_LOG + job_id, {"k": "custom", "ms": "1", "d": "{}"})
            assert await asyncio.wait_for(followers, 30) == [1] * waits

        asyncio.run(go())
    finally:
        threads.close()
        runtime_redis.delete(*(KEY_JOB_LOG + i for i in ids))
