"""Snapshots, shared state and the coordinator's view, wired into real agent processes."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from conftest import redis_url
from redis import Redis
from support.deployments import deployment_on
from support.polling import wait_for

from project.coordinator.shared_view import sync_shared_state
from project.core.celery_app.config import celery_config
from project.core.constants import TASK_SUBMIT
from project.core.models import AgentCard, LocalAgentState, SharedAgentState, Skill
from project.core.runtime import Runtime
from project.core.settings import Settings
from project.core.state.agent_state import agent_thread_id, load_agent_states
from project.core.state.connections import connect_redis
from project.core.state.registry import AgentRegistry
from project.local.deployment import LocalDeployment
from project.local.embedded_redis import EmbeddedRedis
from project.local.topology import default_topology

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

DB = 7
HOST = socket.gethostname()
DISTRIBUTOR_ID = f"distributor1@{HOST}"
COORDINATOR_ID = f"coordinator@{HOST}"


def card(agent_id: str, tier: str) -> AgentCard:
    return AgentCard(
        name=agent_id,
        description="test agent",
        version="0",
        url="celery://x",
        skills=[Skill(id="compute", name="compute")],
        id=agent_id,
        tier=tier,
        queue="x",
    )


def load_state(redis: Redis, agent_id: str, process_index: int | None = None) -> Any:
    """An agent process's last checkpointed local state, or None."""
    thread = agent_thread_id(agent_id, process_index)
    return load_agent_states(redis, [thread]).get(thread)


def test_coordinator_records_death_and_live_workers(redis_client: Redis) -> None:
    rt = Runtime(Settings(redis_url=redis_url(15)))
    registry = AgentRegistry(redis_client)
    for agent_id, tier in (
        ("d1", "distributor"),
        ("d2", "distributor"),
        ("w1", "worker"),
        ("w2", "worker"),
        ("c", "coordinator"),
    ):
        registry.register(card(agent_id, tier))
    registry.mark_dead("w2")
    registry.mark_dead("d2")

    assert sync_shared_state(rt) == {"d1": "active", "d2": "dead"}
    d1, d2 = rt.shared_state.read("d1"), rt.shared_state.read("d2")
    assert d1 is not None and d2 is not None
    assert d1.assigned_workers == ["w1"] and d2.assigned_workers == []
    assert (d1.coordinator_version, d1.distributor_version) == (1, 0)
    # Nothing changed: nothing is written.
    sync_shared_state(rt)
    assert rt.shared_state.read("d1") == d1
    # Re-admitted: the coordinator takes back its verdict, and nothing else.
    registry.heartbeat("d2")
    assert sync_shared_state(rt) == {"d1": "active", "d2": "active"}
    d2_after = rt.shared_state.read("d2")
    assert d2_after is not None and d2_after.assigned_workers == ["w1"]
    rt.shared_state.update("d1", lambda s: setattr(s, "status", "stopped"), writer="distributor")
    assert sync_shared_state(rt)["d1"] == "stopped"


@pytest.fixture(scope="module")
def agents(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalDeployment]:
    """Coordinator, one distributor and worker w9, one pool process each, on ``DB``."""
    services = default_topology(workers=("w9",), distributors=1, concurrency=1, beat=False)
    with deployment_on(DB, tmp_path_factory.mktemp("agent-state"), services=services) as running:
        yield running


@pytest.fixture(scope="module")
def client(agents: LocalDeployment) -> Iterator[Celery]:
    app = Celery("agent-state-client", set_as_current=False)
    app.conf.update(celery_config(Settings(redis_url=redis_url(DB))))
    yield app
    app.close()


def run_jobs(client: Celery, count: int) -> list[str]:
    results = [
        client.send_task(TASK_SUBMIT, args=["compute", {"operation": "sum", "values": [n]}])
        for n in range(count)
    ]
    for n, result in enumerate(results):
        assert result.get(timeout=60)["result"] == n
    return [result.id for result in results]


def history_jobs(state: LocalAgentState | None) -> set[str]:
    return {str(e.get("job_id")) for e in state.history} if state else set()


def test_agents_checkpoint_their_state_and_restore_it_after_a_restart(
    agents: LocalDeployment, client: Celery
) -> None:
    redis = connect_redis(redis_url(DB))
    first = set(run_jobs(client, 3))
    # Tasks run in the worker's pool process 0, which checkpoints a state of its own.
    wait_for(
        lambda: first <= history_jobs(load_state(redis, "w9", 0)), 20, "w9's checkpointed state"
    )

    agents.stop(["w9"])
    agents.start(["w9"])
    agents.wait_ready(timeout_s=90)
    second = set(run_jobs(client, 1))

    def restored_and_continued() -> bool:
        seen = history_jobs(load_state(redis, "w9", 0))
        return first | second <= seen

    wait_for(restored_and_continued, 20, "the restarted worker's state to hold old and new jobs")


def test_distributor_writes_its_shared_state(agents: LocalDeployment, client: Celery) -> None:
    rt = Runtime(Settings(redis_url=redis_url(DB)))
    run_jobs(client, 2)

    def summarised() -> bool:
        state = rt.shared_state.read(DISTRIBUTOR_ID)
        return state is not None and sum(state.task_summary.values()) >= 4

    wait_for(summarised, 20, "the distributor's activity summary")
    state = rt.shared_state.read(DISTRIBUTOR_ID)
    assert state is not None and state.status == "active" and state.distributor_version >= 1

    # The coordinator marks it dead; its next heartbeat re-admits it and writes active again.
    rt.registry.mark_dead(DISTRIBUTOR_ID)
    assert sync_shared_state(rt)[DISTRIBUTOR_ID] == "dead"

    def active_again() -> bool:
        again: SharedAgentState | None = rt.shared_state.read(DISTRIBUTOR_ID)
        return again is not None and again.status == "active"

    # A heartbeat that re-admitted it before the mark may still write "active" after
    # it: only a beat after the mark takes it out of the dead set.
    wait_for(
        lambda: DISTRIBUTOR_ID not in rt.registry.snapshot().dead,
        20,
        "the distributor's heartbeat to re-admit it",
    )
    wait_for(active_again, 20, "the distributor to record itself active again")
    assert sync_shared_state(rt)[DISTRIBUTOR_ID] == "active"
    after = rt.shared_state.read(DISTRIBUTOR_ID)
    assert after is not None and after.coordinator_version >= 2
    assert after.assigned_workers == ["w9"]


def test_coordinator_keeps_its_view_current(agents: LocalDeployment, client: Celery) -> None:
    redis = connect_redis(redis_url(DB))
    finished_before = int(redis.hget("jobs:count", "COMPLETED") or 0)
    run_jobs(client, 2)

    def view_counts() -> dict[str, Any]:
        state = load_state(redis, COORDINATOR_ID)
        view = state.metadata.get("view") if state else None
        return view if isinstance(view, dict) else {}

    wait_for(
        lambda: view_counts().get("jobs", {}).get("COMPLETED") == finished_before + 2,
        20,
        "the coordinator's view (in its checkpointed state) to count the finished jobs",
    )
    assert view_counts()["agents"] == {"alive": 3}
