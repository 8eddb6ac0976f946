"""A worker that is alive but no longer consumes its queue stops itself; its jobs run elsewhere.

The stall is made for real: Celery's own ``cancel_consumer`` control command tells
w1 to stop consuming ``worker.w1`` while its process runs and heartbeats on.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from celery import Celery
from conftest import redis_url, start_deployment

from project.client import submit_many
from project.core.celery_app.config import celery_config
from project.core.models import JobStatus
from project.core.settings import Settings
from project.core.state.connections import connect_redis
from project.core.state.jobs import JobStore
from project.local.embedded_redis import EmbeddedRedis
from project.local.topology import default_topology
from project.worker.bootstep import STALL_EXIT_CODE

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

DB = 5
STALL_S = 3.0


def test_a_stalled_worker_stops_and_its_jobs_complete_elsewhere(
    redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    redis = connect_redis(redis_url(DB))
    redis.flushdb()
    deployment = start_deployment(
        tmp_path,
        db=DB,
        services=default_topology(workers=("w1", "w2"), distributors=1, beat=True),
        AGENTS_ROUTING_STRATEGY="round_robin",
        AGENTS_WORKER_STALL_TIMEOUT_S=str(STALL_S),
        AGENTS_STUCK_JOB_AFTER_S="4",
    )
    try:
        client = Celery("stall-client", set_as_current=False)
        client.conf.update(celery_config(Settings(redis_url=redis_url(DB))))
        store = JobStore(redis, result_ttl_s=3600)
        # A broadcast sent before w1's control consumer has subscribed is lost: ask again.
        replies: list[object] = []
        deadline = time.monotonic() + 30
        while not replies and time.monotonic() < deadline:
            replies = client.control.cancel_consumer(
                "worker.w1", destination=[f"w1@{socket.gethostname()}"], reply=True, timeout=2
            )
        assert replies, "w1 did not answer the cancel_consumer command"
        stalled_at = time.monotonic()
        jobs = [{"task_type": "generic", "payload": {"echo": i}} for i in range(12)]
        results = submit_many(jobs, celery_app=client, store=store)
        assert [r.get(timeout=90)["result"] for r in results] == list(range(12))
        done_s = time.monotonic() - stalled_at
        w1 = deployment.processes["w1"]
        # It stopped itself (TimeoutExpired if it did not), with a failure's exit code.
        assert w1.wait(timeout=30) == STALL_EXIT_CODE
        log = (tmp_path / "w1.log").read_text()
        assert "worker consumer stalled" in log
        records = [store.get(r.id) for r in results]
        rerouted = [r for r in records if r and r.epoch >= 2]
        assert all(r and r.status is JobStatus.COMPLETED and r.assignee == "w2" for r in rerouted)
        assert rerouted, "round robin sent none of the jobs to w1"
        print(
            f"\nstalled worker: {len(rerouted)} of its jobs re-routed; all 12 done "
            f"{done_s:.1f}s after its consumer stopped (stall timeout {STALL_S}s)"
        )
    finally:
        deployment.stop()
