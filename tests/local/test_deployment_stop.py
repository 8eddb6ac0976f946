"""``LocalDeployment.stop`` returns only once every process it started has exited.

A Celery worker service is a main process plus prefork pool children. ``make demo``
used to return while some pool children were still running: ``stop`` waited for
the main processes only, then sent the groups a SIGKILL and did not wait for it.
"""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest
from conftest import redis_url, start_deployment
from support.polling import wait_for

from project.core.state.connections import connect_redis
from project.local.deployment import LocalDeployment
from project.local.embedded_redis import EmbeddedRedis
from project.local.topology import default_topology

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

DB = 8
CONCURRENCY = 2


def _process_tree(deployment: LocalDeployment) -> dict[str, list[psutil.Process]]:
    """Every process of every service: its main process and all descendants."""
    tree: dict[str, list[psutil.Process]] = {}
    for name, popen in deployment.processes.items():
        main = psutil.Process(popen.pid)
        tree[name] = [main, *main.children(recursive=True)]
    return tree


def _running(process: psutil.Process) -> bool:
    """True unless the process has exited (a zombie has exited; it is only unreaped).

    ``psutil.Process`` remembers the process's start time, so a recycled pid does not
    count as the old process.
    """
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("timeout_s", [20.0, 0.0], ids=["warm-shutdown", "sigkill-at-once"])
def test_stop_returns_after_every_process_and_pool_child_exited(
    timeout_s: float, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    connect_redis(redis_url(DB)).flushdb()
    services = default_topology(workers=("w1",), distributors=1, concurrency=CONCURRENCY, beat=True)
    deployment = start_deployment(tmp_path, db=DB, services=services)
    try:
        agents = [s.name for s in services if s.tier != "beat"]

        def pools_up() -> bool:
            tree = _process_tree(deployment)
            return all(len(tree[name]) >= 1 + CONCURRENCY for name in agents)

        wait_for(pools_up, 30, "every agent's prefork pool")
        tree = _process_tree(deployment)
        processes = [process for group in tree.values() for process in group]
        assert len(processes) >= len(services) + CONCURRENCY * len(agents), tree
    finally:
        deployment.stop(timeout_s=timeout_s)

    still_running = {name: [p.pid for p in group if _running(p)] for name, group in tree.items()}
    assert still_running == {name: [] for name in tree}, still_running
    assert all(popen.returncode is not None for popen in deployment.processes.values())


def test_kill_returns_after_every_process_of_the_service_exited(
    redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    connect_redis(redis_url(DB)).flushdb()
    services = [s for s in default_topology(workers=("w1", "w2"), beat=False) if s.tier == "worker"]
    deployment = start_deployment(tmp_path, db=DB, services=services)
    try:
        wait_for(
            lambda: all(
                len(group) >= 1 + CONCURRENCY for group in _process_tree(deployment).values()
            ),
            30,
            "every worker's prefork pool",
        )
        tree = _process_tree(deployment)

        deployment.kill("w1")

        assert [p.pid for p in tree["w1"] if _running(p)] == []
        assert all(_running(p) for p in tree["w2"])
    finally:
        deployment.stop()
    assert [p.pid for p in tree["w2"] if _running(p)] == []
