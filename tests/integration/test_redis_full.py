"""A Redis at maxmemory (noeviction): agents ride it out, accepted jobs complete once.

``maxmemory`` is server-wide, so these tests run their own redis-server, never the
session's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.result import AsyncResult
from kombu import Connection, Exchange, Queue
from prometheus_client import REGISTRY
from pydantic import SecretStr
from redis import Redis
from redis.exceptions import OutOfMemoryError
from support.agents import agent_card

from project.cli import collect_status
from project.core.celery_app import kombu_patches
from project.core.celery_app.config import celery_config
from project.core.constants import KEY_AGENT_HEARTBEATS, KEY_JOBS_COUNT
from project.core.errors import WriteRefusedError
from project.core.models import JobStatus
from project.core.runtime import Runtime
from project.core.settings import Settings
from project.core.state.connections import connect_redis, ride_out_writes
from project.core.state.registry import AgentRegistry
from project.core.submits import submit_calls
from project.local.deployment import LocalDeployment
from project.local.embedded_redis import EmbeddedRedis, child_env
from project.local.topology import default_topology

pytestmark = pytest.mark.integration

FULL_FOR_S = 15.0
"""How long the deployment runs against a full Redis."""
RECOVERY_BOUND_S = 60.0
"""Every accepted job must be done this long after memory is raised."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """A redis-server of this module's own: its maxmemory is changed by the tests."""
    own = EmbeddedRedis(tmp_path_factory.mktemp("redis-full")).start()
    yield own
    own.stop()


@pytest.fixture
def admin(server: EmbeddedRedis) -> Iterator[Redis]:
    """A plain client of the module's server; memory is unlimited again after each test."""
    client = Redis(port=server.port, decode_responses=True)
    client.config_set("maxmemory", "0")
    yield client
    client.config_set("maxmemory", "0")
    client.close()


def _fill(admin: Redis, margin_bytes: int) -> int:
    """Set maxmemory just above what Redis uses, then fill it up; returns the limit."""
    limit = int(admin.info("memory")["used_memory"]) + margin_bytes
    admin.config_set("maxmemory", str(limit))
    _top_up(admin)
    return limit


def _top_up(admin: Redis) -> None:
    """Write padding until Redis refuses (what freed memory is taken again, as by growth)."""
    with pytest.raises(OutOfMemoryError):
        for _ in range(10_000):
            admin.set(f"full:padding:{admin.incr('full:padding')}", "x" * 1024)


def _full(admin: Redis) -> None:
    """Redis refuses every write that could grow it, from now on."""
    admin.config_set("maxmemory", "1")


def _refusals(op: str) -> float:
    samples = [
        s.value
        for metric in REGISTRY.collect()
        if metric.name == "agents_redis_write_errors"
        for s in metric.samples
        if s.name.endswith("_total") and s.labels.get("op") == op
    ]
    return sum(samples)


# --- the parts, one by one -----------------------------------------------------------


def test_a_refused_write_waits_where_writes_are_ridden_out(
    admin: Redis, server: EmbeddedRedis
) -> None:
    client = connect_redis(server.url)
    _full(admin)
    with pytest.raises(OutOfMemoryError):  # an app, a main process: fails fast
        client.set("ride-out", "x" * 1000)
    done = threading.Event()

    def task_thread() -> None:  # a pool child's task: waits until Redis takes it
        ride_out_writes(True, this_thread=True)
        client.set("ride-out", "x" * 1000)
        done.set()

    before = _refusals("state")
    thread = threading.Thread(target=task_thread, daemon=True)
    thread.start()
    assert not done.wait(1.0), "the write went through while Redis was full"
    admin.config_set("maxmemory", "0")
    assert done.wait(5.0), "the write did not go through once Redis took writes"
    assert client.get("ride-out") == "x" * 1000
    assert _refusals("state") > before
    client.close()


def test_heartbeats_go_through_a_full_redis_and_mark_the_agent_degraded(admin: Redis) -> None:
    registry = AgentRegistry(admin)
    registry.register(agent_card("full-w1", skill="generic"))
    try:
        first = int(admin.zscore(KEY_AGENT_HEARTBEATS, "full-w1") or 0)
        _full(admin)
        time.sleep(0.01)
        beat = registry.beat("full-w1")
        assert "maxmemory" in beat.refused
        assert int(admin.zscore(KEY_AGENT_HEARTBEATS, "full-w1") or 0) > first
        snapshot = registry.snapshot()
        assert snapshot.is_live("full-w1", 5.0)
        assert snapshot.is_degraded("full-w1")
        admin.config_set("maxmemory", "0")
        # Still degraded while its last refusal is recent; healthy once it says so.
        again = registry.beat("full-w1", refused_ago_s=1.0, refused_error=beat.refused)
        assert again.refused == ""
        assert registry.snapshot().is_degraded("full-w1")
        registry.beat("full-w1")
        assert not registry.snapshot().is_degraded("full-w1")
    finally:
        admin.config_set("maxmemory", "0")
        registry.deregister("full-w1")


def test_kombu_hands_out_and_acks_messages_while_redis_is_full(
    admin: Redis, server: EmbeddedRedis
) -> None:
    kombu_patches.apply()
    queue = Queue("full-check", Exchange("full-check"), "full-check")
    with Connection(server.url) as connection:
        channel = connection.default_channel
        with connection.Producer() as producer:
            for n in range(3):
                producer.publish(
                    {"n": n}, exchange=queue.exchange, routing_key="full-check", declare=[queue]
                )
        _full(admin)
        received = [queue(channel).get(no_ack=False) for _ in range(3)]
        assert [m.payload["n"] for m in received if m is not None] == [0, 1, 2]
        assert received[0] is not None and received[1] is not None
        received[0].ack()  # MULTI refused: dropped from unacked with plain deletes
        received[1].reject(requeue=True)  # refused: stays in unacked for later
        assert admin.hlen("unacked") <= 1
        admin.config_set("maxmemory", "0")
        assert received[2] is not None
        received[2].ack()
    admin.delete("full-check", "unacked", "unacked_index")


# --- the whole deployment --------------------------------------------------------------


def _client(settings: Settings) -> Celery:
    client = Celery("redis-full-client", set_as_current=False)
    client.conf.update(celery_config(settings))
    client.conf.beat_schedule = {}
    return client


def _job(n: int, sleep_s: float) -> dict[str, Any]:
    return {"args": ["generic", {"echo": {"n": n}, "sleep_s": sleep_s}], "kwargs": {}}


def test_agents_ride_out_a_full_redis_and_every_accepted_job_completes_once(
    admin: Redis, server: EmbeddedRedis, tmp_path: Path
) -> None:
    env = child_env(
        AGENTS_REDIS_URL=server.url,
        AGENTS_STUCK_JOB_AFTER_S="5",
        AGENTS_ASSIGN_DEADLINE_S="120",
    )
    settings = Settings(
        _env_file=None,
        redis_url=server.url,
        a2a_keys=SecretStr(env["AGENTS_A2A_KEYS"]),
        stuck_job_after_s=5.0,
    )
    deployment = LocalDeployment(
        default_topology(workers=("w1", "w2"), distributors=1, beat=True), env=env, log_dir=tmp_path
    )
    deployment.start()
    client = _client(settings)
    runtime = Runtime(settings)
    accepted: dict[str, AsyncResult] = {}
    refused: list[WriteRefusedError] = []
    number = iter(range(10**6))

    def submit(sleep_s: float = 0.05) -> None:
        n = next(number)
        try:
            [result] = submit_calls(client, runtime.jobs, {f"full-{n}": _job(n, sleep_s)})
        except WriteRefusedError as error:
            refused.append(error)
        else:
            accepted[result.id] = result

    try:
        deployment.wait_ready(timeout_s=90)
        for _ in range(20):  # still running when Redis fills up
            submit(sleep_s=0.5)
        limit = _fill(admin, margin_bytes=64 * 1024)
        full_until = time.monotonic() + FULL_FOR_S
        degraded_seen: set[str] = set()
        over_limit = False
        accepted_before = len(accepted)
        while time.monotonic() < full_until:
            _top_up(admin)
            submit()
            over_limit |= int(admin.info("memory")["used_memory"]) > limit
            status = collect_status(admin, settings)
            degraded_seen |= {a["id"] for a in status["agents"] if a["health"] == "degraded"}
            exited = {
                n: p.returncode for n, p in deployment.processes.items() if p.poll() is not None
            }
            assert not exited, f"agents exited while Redis was full: {exited}; logs in {tmp_path}"
            time.sleep(0.2)

        assert over_limit and refused, "Redis never refused a write: it was not full"
        assert all("out of memory" in str(e) and "nothing was submitted" in str(e) for e in refused)
        agents = {a["id"] for a in collect_status(admin, settings)["agents"]}
        assert degraded_seen == agents, f"shown degraded: {degraded_seen}, agents: {agents}"

        # Accepted submits the coordinator has not taken in yet: queued behind tasks that
        # wait, or their message was refused after their intent was recorded (then the
        # health check sends them).
        deferred = {job_id for job_id in accepted if runtime.jobs.get(job_id) is None}
        admin.config_set("maxmemory", "0")
        raised = time.monotonic()
        done_at: dict[str, float] = {}
        while len(done_at) < len(accepted) and time.monotonic() - raised < RECOVERY_BOUND_S:
            for job_id, result in accepted.items():
                if job_id not in done_at and result.ready():
                    done_at[job_id] = time.monotonic() - raised
            time.sleep(0.05)
        for job_id, result in accepted.items():
            n = int(job_id.rsplit("-", 1)[1])
            assert result.get(timeout=1) == {"result": {"n": n}}
        in_flight_s = max((t for j, t in done_at.items() if j not in deferred), default=0.0)
        print(
            f"\nRedis full for {FULL_FOR_S:.0f} s: {len(accepted)} jobs accepted "
            f"({len(accepted) - accepted_before} while full; {len(deferred)} not yet taken in "
            f"by the coordinator), {len(refused)} submits refused; after memory was raised, "
            f"the jobs taken in were done in {in_flight_s:.1f} s, every accepted job in "
            f"{max(done_at.values()):.1f} s"
        )

        for job_id in accepted:
            record = runtime.jobs.get(job_id)
            assert record is not None and record.status is JobStatus.COMPLETED, job_id
            links = [link["type"] for link in runtime.jobs.chain(job_id)]
            assert links.count("EVENT") == 1, (job_id, links)
        counts = {k: int(v) for k, v in admin.hgetall(KEY_JOBS_COUNT).items()}
        assert counts.get(JobStatus.COMPLETED.value) == len(accepted), counts
        exited = {n: p.returncode for n, p in deployment.processes.items() if p.poll() is not None}
        assert not exited, f"agents exited: {exited}"
    finally:
        deployment.stop()
        client.close()
        runtime.redis.close()
