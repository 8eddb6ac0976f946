"""Workers whose wall clocks are 45 s off, as real processes under libfaketime.

w1's clock runs 45 s behind, w2's 45 s ahead; Redis, the coordinator (+ beat) and the
distributor keep the true clock. Liveness is measured on Redis's clock only, so neither
worker is ever marked dead. Envelopes carry their signer's clock, and with a 20 s TTL a
45 s skew makes every envelope between a skewed worker and a true-clock tier expired
(or signed in the future) on arrival; ``AGENTS_ENVELOPE_CLOCK_SKEW_S=60`` accepts them.

Needs libfaketime (Debian package ``faketime``); skipped with the reason where it is
missing. Only the wall clock is faked (``FAKETIME_DONT_FAKE_MONOTONIC=1``): a faked
monotonic clock hangs lock timeouts. A ``sitecustomize`` shim (written by
``tools.chaos.skew.write_shim``) mends the ``time.sleep`` that libfaketime 0.9.10
breaks in that mode.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery.result import AsyncResult
from conftest import redis_url
from redis.client import PubSub
from support.deployments import DeploymentClient, deployment_on
from support.polling import wait_for

from project.client import submit_many
from project.core.a2a.envelope import now_ms
from project.core.constants import CHANNEL_AGENTS, KEY_STATS_HEALTH, KEY_STATS_REFUSED
from project.core.models import JobStatus
from project.core.state.connections import connect_redis
from project.local.deployment import LocalDeployment
from project.local.embedded_redis import EmbeddedRedis
from project.local.topology import default_topology, worker_service
from tools.chaos import skew

pytestmark = pytest.mark.integration

DB = 9
OFFSETS_S = {"w1": -45, "w2": +45}
"""Each skewed worker's wall clock, relative to the true one."""
TTL_S = 20
SKEW_S = 60
JOBS_PER_WORKER = 20
HEALTH_CHECKS = 8
"""Health-check runs to watch: with a 1 s interval, twice the 4 s heartbeat timeout."""
HEARTBEAT_TIMEOUT_S = float(os.environ["AGENTS_HEARTBEAT_TIMEOUT_S"])  # set by conftest


def skewed_env(library: Path, offset_s: int, shim: Path) -> dict[str, str]:
    """The environment that runs a Python process with its wall clock ``offset_s`` off."""
    return skew.skewed_env(library, offset_s, shim, os.environ.get("PYTHONPATH"))


_PROBE = """
import json, time
started = time.monotonic()
time.sleep(0.2)
print(json.dumps({"wall_ms": time.time_ns() // 1_000_000,
                  "slept_s": time.monotonic() - started,
                  "shimmed": time.sleep.__module__ == "sitecustomize"}))
"""


def libfaketime_or_skip(shim: Path) -> Path:
    """libfaketime, checked to shift this Python's wall clock and to leave its sleep working
    with the sleep shim in folder ``shim``."""
    library = skew.find_libfaketime()
    if library is None:
        pytest.skip(
            "libfaketime.so.1 not found (looked under /usr/lib/<multiarch>/faketime, "
            "/usr/lib/faketime, /usr/local/lib/faketime): install Debian's 'faketime' package"
        )
    env = {**os.environ, **skewed_env(library, OFFSETS_S["w2"], shim)}
    before = now_ms()
    probe = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=30
    )
    if probe.returncode != 0:
        pytest.skip(f"a Python process under {library} fails: {probe.stderr.strip()[-500:]}")
    seen = json.loads(probe.stdout)
    shift_ms = seen["wall_ms"] - before
    wanted_ms = OFFSETS_S["w2"] * 1000
    if not wanted_ms - 1_000 <= shift_ms <= wanted_ms + 10_000:
        pytest.skip(f"{library} did not shift Python's wall clock by {wanted_ms} ms: {shift_ms}")
    assert 0.19 <= seen["slept_s"] < 2.0, seen  # sleep works and sleeps for real time
    print(f"\nlibfaketime {library}; time.sleep mended by the shim: {seen['shimmed']}")
    return library


class Cluster(DeploymentClient):
    """The skewed deployment on database ``DB`` and a client bound to it."""

    def __init__(self, deployment: LocalDeployment, events: PubSub) -> None:
        super().__init__(deployment, DB, "clock-skew-client")
        self.events = events

    def health_runs(self) -> int:
        return int(self.redis.hget(KEY_STATS_HEALTH, "runs") or 0)

    def agent_events(self) -> list[dict[str, Any]]:
        """Registry announcements received since the last call."""
        seen = []
        while (message := self.events.get_message(timeout=0.01)) is not None:
            if message["type"] == "message":
                seen.append(json.loads(message["data"]))
        return seen


@pytest.fixture(scope="module")
def cluster(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    shim = skew.write_shim(tmp_path_factory.mktemp("faketime-shim"))
    library = libfaketime_or_skip(shim)
    services = [
        *default_topology(workers=(), distributors=1, beat=True),
        *(worker_service(w, **skewed_env(library, off, shim)) for w, off in OFFSETS_S.items()),
    ]
    # Subscribed before anything starts, so no dead mark of the agents' lifetime is missed.
    events = connect_redis(redis_url(DB)).pubsub(ignore_subscribe_messages=True)
    events.subscribe(CHANNEL_AGENTS)
    try:
        with deployment_on(
            DB,
            tmp_path_factory.mktemp("clock-skew"),
            services=services,
            AGENTS_ENVELOPE_TTL_S=str(TTL_S),
            AGENTS_ENVELOPE_CLOCK_SKEW_S=str(SKEW_S),
        ) as running:
            yield Cluster(running, events)
    finally:
        events.close()


def test_skewed_workers_are_never_marked_dead(cluster: Cluster) -> None:
    runs_before = cluster.health_runs()
    checked = 0

    def watched_enough() -> bool:
        nonlocal checked
        snapshot = cluster.registry.snapshot()
        for worker in OFFSETS_S:
            assert worker not in snapshot.dead, f"{worker} marked dead"
            assert snapshot.is_live(worker, HEARTBEAT_TIMEOUT_S), (worker, snapshot)
            # Stamped with Redis's clock, not the worker's: a beat is never 45 s off.
            age_s = snapshot.heartbeat_age_s(worker)
            assert age_s is not None and age_s <= HEARTBEAT_TIMEOUT_S, (worker, age_s)
            assert snapshot.beats[worker] <= snapshot.now_ms + 1_000, (worker, snapshot)
        checked += 1
        return cluster.health_runs() >= runs_before + HEALTH_CHECKS

    took_s = wait_for(watched_enough, HEALTH_CHECKS * 5, f"{HEALTH_CHECKS} health checks")
    print(f"\n{HEALTH_CHECKS} health checks in {took_s:.1f}s, {checked} registry snapshots")
    skewed_marks = [
        e
        for e in cluster.agent_events()
        if e.get("agent_id") in OFFSETS_S and e.get("event") in ("dead", "readmitted")
    ]
    assert skewed_marks == []
    assert not set(OFFSETS_S) & cluster.registry.dead_agents()


def _links(cluster: Cluster, job_id: str, worker: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The job's work order to ``worker`` (true clock) and ``worker``'s RESPONSE (skewed)."""
    chain = cluster.jobs.chain(job_id)
    orders = [c for c in chain if c["type"] == "REQUEST" and c["recipient"] == worker]
    responses = [c for c in chain if c["type"] == "RESPONSE" and c["sender"] == worker]
    assert len(orders) == 1 and len(responses) == 1, chain
    return orders[0], responses[0]


def test_skewed_workers_run_jobs_and_their_envelopes_are_accepted(cluster: Cluster) -> None:
    refused_before: dict[str, str] = cluster.redis.hgetall(KEY_STATS_REFUSED)  # type: ignore[assignment]
    jobs: list[dict[str, Any]] = [
        {
            "task_type": "generic",
            "payload": {"echo": f"{worker}-{n}", "sleep_s": 0.05},
            "requirements": {"worker_ids": [worker]},
        }
        for n in range(JOBS_PER_WORKER)
        for worker in OFFSETS_S
    ]
    started = time.monotonic()
    results: list[AsyncResult] = submit_many(jobs, celery_app=cluster.client, store=cluster.jobs)

    def unfinished() -> list[str]:
        return [
            r.id
            for r in results
            if (record := cluster.jobs.get(r.id)) is None or not record.status.is_final
        ]

    try:
        wait_for(lambda: not unfinished(), 60, "every job's record to be final")
    except AssertionError:
        for job_id in unfinished():
            print("UNFINISHED", job_id, cluster.jobs.get(job_id), cluster.jobs.chain(job_id))
        raise
    values = [r.get(timeout=30)["result"] for r in results]
    print(f"\n{len(jobs)} jobs on skewed workers in {time.monotonic() - started:.1f}s")
    assert values == [job["payload"]["echo"] for job in jobs]
    for job, result in zip(jobs, results, strict=True):
        worker = job["requirements"]["worker_ids"][0]
        record = cluster.jobs.get(result.id)
        assert record is not None and record.status is JobStatus.COMPLETED, record
        assert record.assignee == worker
        order, response = _links(cluster, result.id, worker)
        # The worker signed its RESPONSE on its own clock, offset from the distributor's
        # work order by the skew: 45 s, more than the 20 s TTL. Without the allowance,
        # w1's RESPONSE (and w2's view of its work order) is expired on arrival, and
        # w2's RESPONSE (and w1's view of its work order) is signed in the future.
        skew_ms = response["timestamp_ms"] - order["timestamp_ms"]
        offset_ms = OFFSETS_S[worker] * 1000
        assert offset_ms - 100 <= skew_ms <= offset_ms + 10_000, (worker, order, response)
        assert abs(skew_ms) > TTL_S * 1000
    refused: dict[str, str] = cluster.redis.hgetall(KEY_STATS_REFUSED)  # type: ignore[assignment]
    assert refused == refused_before, "envelopes were refused (see the agents' logs)"
    assert not set(OFFSETS_S) & cluster.registry.dead_agents()
