"""Failures the deployment must survive, with real processes and a real redis-server.

One deployment (coordinator + beat, two distributors, workers w1..w3) on its own
Redis database; each test kills something, checks that nothing is lost, and
restarts what it killed.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.result import AsyncResult
from conftest import redis_url, start_deployment
from support.deployments import DeploymentClient
from support.polling import wait_for

from project.client import submit_many
from project.core.celery_app.config import celery_config
from project.core.constants import TASK_SUBMIT
from project.core.errors import JobAbandonedError
from project.core.models import JobStatus
from project.core.settings import Settings
from project.core.state.connections import connect_redis
from project.core.state.jobs import JobStore
from project.local.deployment import LocalDeployment
from project.local.embedded_redis import EmbeddedRedis

pytestmark = pytest.mark.integration

DB = 11
SUPPORT = Path(__file__).resolve().parent.parent / "support"
RECOVERY_LIMIT_S = 15.0


class Cluster(DeploymentClient):
    """A deployment on database ``DB`` with a client bound to it."""

    def __init__(self, deployment: LocalDeployment) -> None:
        super().__init__(deployment, DB, "recovery-client")

    def submit(self, task_type: str, payload: dict[str, Any], **options: Any) -> AsyncResult:
        """Submit as an app does: the intent first, so a submit lost with Redis is re-sent."""
        job = {"task_type": task_type, "payload": payload, **options}
        return submit_many([job], celery_app=self.client, store=self.jobs)[0]

    def restart(self, name: str) -> None:
        self.deployment.start([name])
        self.deployment.wait_ready(timeout_s=60)

    def stat(self, key: str, field: str) -> int:
        return int(self.redis.hget(key, field) or 0)

    def work_order_senders(self, job_ids: list[str]) -> set[str]:
        """Distributors (service names) whose work orders for these jobs a worker started."""
        links = [link for job_id in job_ids for link in self.jobs.chain(job_id)]
        return {
            link["sender"].partition("@")[0]
            for link in links
            if link["type"] == "REQUEST" and link["recipient"] in ("w1", "w2", "w3")
        }


@pytest.fixture(scope="module")
def cluster(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    connect_redis(redis_url(DB)).flushdb()
    deployment = start_deployment(
        tmp_path_factory.mktemp("recovery"),
        db=DB,
        distributors=2,
        beat=True,
        AGENTS_STUCK_JOB_AFTER_S="4",
        AGENTS_HANDLER_MODULES="poison_handlers",
        PYTHONPATH=str(SUPPORT),
    )
    yield Cluster(deployment)
    deployment.stop()


@pytest.fixture(autouse=True)
def _every_agent_up(request: pytest.FixtureRequest) -> None:
    """Start again any agent an earlier test left killed or paused, so one failure stays one."""
    if "cluster" not in request.fixturenames:
        return
    deployment = request.getfixturevalue("cluster").deployment
    dead = []
    for name, process in deployment.processes.items():
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)  # harmless if it was not paused
        else:
            dead.append(name)
    if dead:
        deployment.start(dead)
        deployment.wait_ready(timeout_s=60)


def running_elsewhere(jobs: JobStore, victims: set[str], dead: str) -> bool:
    """Every job the dead worker held is done, or running on another worker."""
    for job_id in victims:
        record = jobs.get(job_id)
        assert record is not None
        if record.status is JobStatus.COMPLETED:
            continue
        if record.assignee == dead or record.status is not JobStatus.IN_PROGRESS:
            return False
    return True


def test_killed_worker_jobs_rerouted_and_completed(cluster: Cluster) -> None:
    results = [cluster.submit("generic", {"echo": i, "sleep_s": 0.6}) for i in range(48)]
    wait_for(lambda: len(cluster.jobs.open_jobs_of("w1")) >= 4, 30, "w1 to hold jobs")
    victims = cluster.jobs.open_jobs_of("w1")
    cluster.deployment.kill("w1")
    killed_at = time.monotonic()

    wait_for(lambda: running_elsewhere(cluster.jobs, victims, "w1"), 30, "w1's jobs elsewhere")
    recovery_s = time.monotonic() - killed_at
    print(f"\nrecovery: {len(victims)} jobs of killed w1 running elsewhere after {recovery_s:.2f}s")
    assert recovery_s < RECOVERY_LIMIT_S
    assert [r.get(timeout=60)["result"] for r in results] == list(range(48))
    cluster.completed(results, 60)
    assert "w1" in cluster.registry.dead_agents()
    assert cluster.redis.llen("worker.w1") == 0
    records = [cluster.jobs.get(j) for j in victims]
    assert all(r is not None for r in records)
    # Each victim was re-routed (new epoch, another worker), unless w1's own result
    # for it was already on its way when the kill landed (recorded at epoch 1).
    rerouted = [r for r in records if r and r.epoch >= 2 and r.assignee != "w1"]
    finished_by_w1 = [r for r in records if r and r.epoch == 1 and r.assignee == "w1"]
    assert len(rerouted) + len(finished_by_w1) == len(victims)
    assert len(rerouted) >= len(victims) - 2, (len(rerouted), len(victims))
    cluster.restart("w1")
    wait_for(lambda: "w1" not in cluster.registry.dead_agents(), 10, "w1 re-admitted")
    assert (
        cluster.submit("compute", {"operation": "sum", "values": [2, 2]}).get(timeout=30)["result"]
        == 4
    )


def test_paused_worker_late_results_ignored(cluster: Cluster) -> None:
    ignored_before = cluster.stat("stats:jobs", "stale_results_ignored")
    results = [cluster.submit("generic", {"echo": i, "sleep_s": 2.0}) for i in range(12)]

    def in_progress_on_w2() -> set[str]:
        held = cluster.jobs.open_jobs_of("w2")
        return {
            j
            for j in held
            if (rec := cluster.jobs.get(j)) is not None and rec.status is JobStatus.IN_PROGRESS
        }

    wait_for(lambda: len(in_progress_on_w2()) >= 1, 30, "w2 to run a job")
    running = in_progress_on_w2()
    cluster.deployment.signal("w2", signal.SIGSTOP)
    try:
        wait_for(lambda: "w2" in cluster.registry.dead_agents(), 20, "w2 marked dead")
        wait_for(
            lambda: all(
                (rec := cluster.jobs.get(j)) is not None and rec.assignee != "w2" for j in running
            ),
            20,
            "w2's jobs re-routed",
        )
        values = [r.get(timeout=60)["result"] for r in results]
    finally:
        cluster.deployment.signal("w2", signal.SIGCONT)
    assert values == list(range(12))
    # The paused worker finishes its old runs: their results carry a stale epoch.
    wait_for(
        lambda: (
            cluster.stat("stats:jobs", "stale_results_ignored") >= ignored_before + len(running)
        ),
        30,
        "late results from w2 to be ignored",
    )
    for job_id in running:
        record = cluster.jobs.get(job_id)
        assert record is not None and record.status is JobStatus.COMPLETED
        assert record.assignee != "w2" and record.epoch >= 2
    wait_for(lambda: "w2" not in cluster.registry.dead_agents(), 15, "w2 re-admitted")


def test_killed_distributor_loses_nothing(cluster: Cluster) -> None:
    results = [
        cluster.submit("compute", {"operation": "sum", "values": [i, 1]}) for i in range(300)
    ]
    # Kill distributor1 mid-stream: once both distributors have sent work orders for
    # this batch (a worker appends each order to its job's causal chain as it starts it).
    batch = [r.id for r in results]
    wait_for(
        lambda: {"distributor1", "distributor2"} <= cluster.work_order_senders(batch),
        30,
        "both distributors to dispatch jobs of the batch",
    )
    cluster.deployment.kill("distributor1")
    cluster.completed(results, 90)
    assert [r.get(timeout=1)["result"] for r in results] == [i + 1 for i in range(300)]
    cluster.restart("distributor1")


def test_poison_job_stops_after_max_attempts(cluster: Cluster) -> None:
    with pytest.raises(JobAbandonedError, match="poison"):
        cluster.submit("poison", {}).get(timeout=90)
    for name in ("w1", "w2", "w3"):
        assert cluster.deployment.processes[name].poll() is None, f"{name} died"
    assert cluster.submit("generic", {"echo": "alive"}).get(timeout=30) == {"result": "alive"}


def test_two_beats_do_not_double_act(cluster: Cluster) -> None:
    from project.local.topology import Service

    cluster.deployment.add(
        Service("beat2", ("celery", "-A", "project", "beat", "-l", "INFO"), tier="beat")
    )
    cluster.deployment.start(["beat2"])
    try:
        runs0 = cluster.stat("stats:health", "runs")
        skipped0 = cluster.stat("stats:health", "skipped")
        wait_for(
            lambda: cluster.stat("stats:health", "skipped") > skipped0 + 3, 30, "a beat skipped"
        )
        window_start = time.monotonic()
        runs1 = cluster.stat("stats:health", "runs")
        time.sleep(6)
        runs = cluster.stat("stats:health", "runs") - runs1
        elapsed = time.monotonic() - window_start
        # One run per 1 s interval at most (plus one for edges), not one per beat.
        assert runs <= elapsed / 1.0 * 1.25 + 1, (runs, elapsed)
        assert runs >= 1 and runs1 > runs0
        # Both beats firing at once still re-route a killed worker's jobs once each.
        rerouted0 = cluster.stat("stats:jobs", "rerouted")
        results = [cluster.submit("generic", {"echo": i, "sleep_s": 0.5}) for i in range(24)]
        wait_for(lambda: len(cluster.jobs.open_jobs_of("w3")) >= 2, 30, "w3 to hold jobs")
        victims = cluster.jobs.open_jobs_of("w3")
        cluster.deployment.kill("w3")
        assert [r.get(timeout=60)["result"] for r in results] == list(range(24))
        rerouted = cluster.stat("stats:jobs", "rerouted") - rerouted0
        assert rerouted >= len(victims) - 2  # some may have finished before the kill landed
        for job_id in victims:
            record = cluster.jobs.get(job_id)
            assert record is not None and record.status is JobStatus.COMPLETED
            assert record.attempts <= 2, (job_id, record.attempts)
    finally:
        cluster.deployment.stop(["beat2"])
        del cluster.deployment.processes["beat2"]
    cluster.restart("w3")


def test_lease_makes_concurrent_health_checks_act_once(cluster: Cluster) -> None:
    from project.coordinator.supervisor import run_supervisor_cycle
    from project.core.runtime import Runtime

    runtime = Runtime(Settings(redis_url=redis_url(DB), health_check_interval_s=5))

    def race() -> int:
        """Four cycles at once on a free lease: how many ran."""
        reports = []
        barrier = threading.Barrier(4)

        def run() -> None:
            barrier.wait()
            reports.append(run_supervisor_cycle(runtime))

        threads = [threading.Thread(target=run) for _ in range(4)]
        cluster.redis.delete("lease:beat:health_check")
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert len(reports) == 4
        return sum(1 for r in reports if r.ran)

    # The cluster's own beat (every second) may take the freed lease first; then none
    # of the four runs, and the race is run again. Never may two of them run.
    ran = [race() for _ in range(5)]
    assert all(n <= 1 for n in ran), ran
    assert 1 in ran, f"the cluster's beat took the lease first every time: {ran}"


def test_lost_result_on_a_live_worker_is_redispatched(cluster: Cluster) -> None:
    from celery.utils import uuid

    from project.core.a2a.envelope import MessageType, now_ms
    from project.core.models import JobSpec
    from project.core.runtime import Runtime

    # A job IN_PROGRESS on live w2 that w2 is not running: its RESPONSE was lost.
    signer = Runtime(Settings(redis_url=redis_url(DB))).signer
    job_id = uuid()
    spec = JobSpec(task_type="generic", payload={"echo": "again"})
    assert cluster.jobs.create(job_id, spec, deadline_ms=now_ms() + 60_000)
    request = signer.request(
        sender="coordinator", recipient="distributor", payload={}, request_id=job_id
    )
    assigned = cluster.jobs.assign(
        job_id, expected_epoch=0, worker_id="w2", max_attempts=3, dispatch=request
    )
    assert assigned.kind == "ok" and assigned.epoch == 1
    order = signer.reply(request, MessageType.REQUEST, {}, sender="distributor", recipient="w2")
    assert cluster.jobs.start(job_id, epoch=1, worker_id="w2", request=order, max_runs=3) == "run"
    assert cluster.client.AsyncResult(job_id).get(timeout=60) == {"result": "again"}
    record = cluster.jobs.get(job_id)
    assert record is not None and record.status is JobStatus.COMPLETED and record.epoch == 2


def test_recovery_with_default_settings(redis_server: EmbeddedRedis, tmp_path: Path) -> None:
    """With the default heartbeat and health-check settings, recovery takes under 15 s."""
    db = 12
    redis = connect_redis(redis_url(db))
    redis.flushdb()
    default_timeout_s = Settings.model_fields["heartbeat_timeout_s"].default
    deployment = start_deployment(
        tmp_path,
        db=db,
        beat=True,
        AGENTS_HEARTBEAT_INTERVAL_S=str(Settings.model_fields["heartbeat_interval_s"].default),
        AGENTS_HEARTBEAT_TIMEOUT_S=str(default_timeout_s),
        AGENTS_HEALTH_CHECK_INTERVAL_S=str(
            Settings.model_fields["health_check_interval_s"].default
        ),
    )
    try:
        client = Celery("defaults-client", set_as_current=False)
        client.conf.update(celery_config(Settings(redis_url=redis_url(db))))
        jobs = JobStore(redis, result_ttl_s=3600)
        results = [
            client.send_task(TASK_SUBMIT, args=["generic", {"echo": i, "sleep_s": 1.0}])
            for i in range(30)
        ]
        wait_for(lambda: len(jobs.open_jobs_of("w2")) >= 3, 30, "w2 to hold jobs")
        victims = jobs.open_jobs_of("w2")
        deployment.kill("w2")
        killed_at = time.monotonic()

        wait_for(lambda: running_elsewhere(jobs, victims, "w2"), 40, "w2's jobs elsewhere")
        recovery_s = time.monotonic() - killed_at
        print(
            f"\nrecovery with defaults (heartbeat timeout {default_timeout_s}s): "
            f"{len(victims)} jobs running elsewhere after {recovery_s:.2f}s"
        )
        assert recovery_s < RECOVERY_LIMIT_S
        assert [r.get(timeout=90)["result"] for r in results] == list(range(30))
    finally:
        deployment.stop()


def test_stale_copy_of_a_rerouted_job_is_dropped(cluster: Cluster) -> None:
    from celery.utils import uuid

    from project.core.a2a.envelope import MessageType, now_ms
    from project.core.constants import KEY_STATS_REFUSED, TASK_EXECUTE
    from project.core.messages import WorkOrder
    from project.core.models import JobSpec
    from project.core.runtime import Runtime

    # The job went to w2 at epoch 1, was re-routed to w3 at epoch 2 and finished there;
    # the old epoch-1 order reaches w2 afterwards (a restored copy, a worker come back).
    signer = Runtime(Settings(redis_url=redis_url(DB))).signer
    job_id = uuid()
    spec = JobSpec(task_type="compute", payload={"operation": "sum", "values": [1]})
    assert cluster.jobs.create(job_id, spec, deadline_ms=now_ms() + 60_000)
    dispatches = []
    for epoch, worker_id in enumerate(("w2", "w3")):
        dispatch = signer.request(
            sender="coordinator", recipient="distributor", payload={}, request_id=job_id
        )
        assigned = cluster.jobs.assign(
            job_id, expected_epoch=epoch, worker_id=worker_id, max_attempts=3, dispatch=dispatch
        )
        assert (assigned.kind, assigned.epoch) == ("ok", epoch + 1)
        dispatches.append(dispatch)
    first = dispatches[0]
    finished = cluster.jobs.finish(job_id, epoch=2, status=JobStatus.COMPLETED, result={"r": 1})
    assert finished.kind == "recorded"  # w3 ran it
    order = WorkOrder(job_id=job_id, epoch=1, task_type="compute", payload=spec.payload)
    stale = signer.reply(
        first,
        MessageType.REQUEST,
        order.model_dump(mode="json"),
        sender="distributor",
        recipient="w2",
    )
    executions = cluster.jobs.stats().get("handler_executions", 0)
    replays = cluster.stat(KEY_STATS_REFUSED, "replay")
    cluster.client.send_task(TASK_EXECUTE, args=[stale.to_wire()], queue="worker.w2")
    # The job is final, so the copy is a replay: w2 refuses it (counted) and runs nothing.
    wait_for(
        lambda: cluster.stat(KEY_STATS_REFUSED, "replay") > replays, 15, "w2 to refuse the copy"
    )
    record = cluster.jobs.get(job_id)
    assert record is not None and record.epoch == 2 and record.assignee == "w3"
    assert record.status is JobStatus.COMPLETED and record.result == {"r": 1}
    assert cluster.jobs.stats().get("handler_executions", 0) == executions
