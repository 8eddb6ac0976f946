"""Redis killed and restarted under load: every acknowledged job completes, once.

Killing Redis is server-wide, so this module runs a redis-server of its own (AOF,
``appendfsync always``), never the session's: the other modules' deployments on the
session's server must not live through a restart they did not ask for.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from celery.result import AsyncResult
from support.deployments import DeploymentClient

from project.client import submit_many
from project.local.deployment import LocalDeployment
from project.local.embedded_redis import EmbeddedRedis, child_env
from project.local.topology import default_topology
from project.worker.bootstep import STALL_EXIT_CODE

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

JOBS = 150
STALL_TIMEOUT_S = 15.0
"""The workers' stall watchdog, shorter than the default so a stall costs less here."""


class Restarted(DeploymentClient):
    """Coordinator + beat, two distributors and w1..w3 on the module's own Redis."""

    def __init__(self, deployment: LocalDeployment, server: EmbeddedRedis) -> None:
        super().__init__(deployment, 0, "restart-client", url=server.url)

    def submit(self, payload: dict[str, Any]) -> AsyncResult:
        """Submit as an app does: the intent first, so a submit lost with Redis is re-sent."""
        job = {"task_type": "generic", "payload": payload}
        return submit_many([job], celery_app=self.client, store=self.jobs)[0]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    own = EmbeddedRedis(tmp_path_factory.mktemp("redis-restart")).start()
    yield own
    own.stop()


@pytest.fixture(scope="module")
def cluster(server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Restarted]:
    env = child_env(
        AGENTS_REDIS_URL=server.url,
        AGENTS_STUCK_JOB_AFTER_S="4",
        AGENTS_WORKER_STALL_TIMEOUT_S=str(STALL_TIMEOUT_S),
    )
    deployment = LocalDeployment(
        default_topology(distributors=2, beat=True),
        env=env,
        log_dir=tmp_path_factory.mktemp("restart-logs"),
    )
    deployment.start()
    try:
        deployment.wait_ready(timeout_s=90)
        yield Restarted(deployment, server)
    finally:
        deployment.stop()


def test_redis_restart_loses_no_acknowledged_job(cluster: Restarted, server: EmbeddedRedis) -> None:
    results = [cluster.submit({"echo": i, "sleep_s": 0.02}) for i in range(JOBS)]
    deadline = time.monotonic() + 30
    while not cluster.jobs.counts().get("COMPLETED", 0):
        assert time.monotonic() < deadline, "no job completed before the restart"
        time.sleep(0.05)
    server.kill()
    time.sleep(1.0)
    server.start()
    restarted_at = time.monotonic()
    values = [value["result"] for value in cluster.completed(results, 120)]
    done_s = time.monotonic() - restarted_at
    assert values == list(range(JOBS))

    # No agent died of the restart. The one exit allowed is the designed answer to
    # Celery's known stall after a broker restart (celery/celery#9054): a worker whose
    # consumer went quiet stops itself, and its jobs are re-routed (see DEPLOYMENT.md).
    stopped = {
        name: p.returncode
        for name, p in cluster.deployment.processes.items()
        if p.poll() is not None
    }
    for name, code in stopped.items():
        log = (cluster.deployment.log_dir / f"{name}.log").read_text(errors="replace")
        assert code == STALL_EXIT_CODE and "worker consumer stalled" in log, (name, code)
    print(
        f"\nredis restart: all {JOBS} jobs done {done_s:.2f}s after restart; "
        f"stopped by the stall watchdog: {sorted(stopped) or 'none'}"
    )
    fresh = cluster.submit({"echo": "after"})
    assert fresh.get(timeout=60)["result"] == "after"
