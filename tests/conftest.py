"""Session fixtures: a private redis-server and real Celery worker processes.

The environment is set before ``project``'s Celery configuration is first read,
so the test process (the "app") and every child process talk to the private
Redis only.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from redis import Redis

from project.ops.embedded_redis import EmbeddedRedis, child_env, free_port

REDIS_PORT = free_port()
TEST_KEYS = "test-k1:" + "a" * 40 + ",test-k0:" + "b" * 40
os.environ.update(
    {
        "AGENTS_REDIS_URL": f"redis://127.0.0.1:{REDIS_PORT}/0",
        "AGENTS_A2A_KEYS": TEST_KEYS,
        "AGENTS_DEV_MODE": "false",
        "AGENTS_HEARTBEAT_INTERVAL_S": "1",
        "AGENTS_HEARTBEAT_TIMEOUT_S": "4",
        "AGENTS_HEALTH_CHECK_INTERVAL_S": "1",
        "AGENTS_ASSIGN_DEADLINE_S": "20",
    }
)

from project.core.redis_store import connect_redis  # noqa: E402
from project.core.runtime import reset_runtime  # noqa: E402
from project.ops.local import LocalDeployment  # noqa: E402
from project.ops.topology import Service, default_topology  # noqa: E402


def redis_url(db: int = 0) -> str:
    """URL of a database of the session's private redis-server."""
    return f"redis://127.0.0.1:{REDIS_PORT}/{db}"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """The session's own redis-server (AOF on), on a free port in a temp folder."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), port=REDIS_PORT).start()
    reset_runtime()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server: EmbeddedRedis) -> Iterator[Redis]:
    """A client on a scratch database (15), flushed before each test."""
    client = connect_redis(redis_url(15))
    client.flushdb()
    yield client
    client.close()


def start_deployment(
    tmp: Path,
    *,
    db: int = 0,
    distributors: int = 1,
    beat: bool = False,
    services: Sequence[Service] | None = None,
    **env: str,
) -> LocalDeployment:
    """Coordinator, distributor(s) and workers w1..w3 on database ``db``, ready.

    ``services`` replaces the default topology (e.g. workers with their own tags or
    weights, from :func:`project.ops.topology.worker_service`).
    """
    environment = child_env(AGENTS_REDIS_URL=redis_url(db), **env)
    topology = (
        list(services)
        if services is not None
        else default_topology(distributors=distributors, beat=beat)
    )
    deployment = LocalDeployment(topology, env=environment, log_dir=tmp)
    deployment.start()
    try:
        deployment.wait_ready(timeout_s=90)
    except BaseException:
        deployment.stop()
        raise
    return deployment


@pytest.fixture(scope="session")
def deployment(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalDeployment]:
    """Every tier as real Celery worker processes on database 0 (least-busy routing)."""
    running = start_deployment(tmp_path_factory.mktemp("deployment"))
    yield running
    running.stop()
