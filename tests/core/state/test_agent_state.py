"""Each agent's local state: a LangGraph thread checkpointed in Redis, restored by a new process."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import redis_url
from redis import Redis

from project.core.checkpoint import thread_keys
from project.core.models import AgentStatus, LocalAgentState
from project.core.state.agent_state import (
    AGENT_STATE_TTL_S,
    AgentStateKeeper,
    agent_thread_id,
    load_agent_states,
)

pytestmark = pytest.mark.integration

RESTORE = """
import sys
from project.core.state.agent_state import AgentStateKeeper
from project.core.state.connections import connect_redis

state = AgentStateKeeper(connect_redis(sys.argv[1]), sys.argv[2]).restore()
print(state.model_dump_json() if state is not None else "none")
"""


def state(agent_id: str = "w7", **fields: object) -> LocalAgentState:
    local = LocalAgentState(agent_id=agent_id, tier="worker", **fields)  # type: ignore[arg-type]
    local.record({"job_id": "j1", "event": "COMPLETED"})
    return local


def test_a_new_process_restores_the_checkpointed_state_equal(redis_client: Redis) -> None:
    saved = state(status=AgentStatus.BUSY, variables={"n": 3})
    thread = agent_thread_id("w7", 0)
    assert AgentStateKeeper(redis_client, thread).save_if_changed(saved)
    out = subprocess.run(
        [sys.executable, "-c", RESTORE, redis_url(15), thread],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    assert LocalAgentState.model_validate_json(out) == saved


def test_the_keeper_checkpoints_only_changes_and_restores_once(redis_client: Redis) -> None:
    thread = agent_thread_id("w8", None)
    keeper = AgentStateKeeper(redis_client, thread)
    local = state("w8")
    assert keeper.save_if_changed(local)
    assert not keeper.save_if_changed(local), "an unchanged state is not checkpointed again"
    local.record({"job_id": "j2", "event": "FAILED"})
    assert keeper.save_if_changed(local)
    again = AgentStateKeeper(redis_client, thread)
    assert again.restore() == local
    assert again.restore() is None, "a process restores its state once"
    assert not again.save_if_changed(local), "what was restored counts as saved"


def test_pool_processes_have_threads_of_their_own(redis_client: Redis) -> None:
    assert agent_thread_id("w1", None) == "agent:w1"
    assert agent_thread_id("w1", 0) == "agent:w1:0"
    for index in (None, 0, 1):
        thread = agent_thread_id("w1", index)
        AgentStateKeeper(redis_client, thread).save_if_changed(
            state("w1", metadata={"thread": thread})
        )
    wanted = [agent_thread_id("w1", i) for i in (None, 0, 1, 2)]
    found = load_agent_states(redis_client, wanted)
    assert sorted(found) == sorted(wanted[:3])
    assert all(found[t].metadata["thread"] == t for t in found)


def test_agent_threads_expire_and_keep_few_checkpoints(redis_client: Redis) -> None:
    thread = agent_thread_id("w2", None)
    keeper = AgentStateKeeper(redis_client, thread)
    local = state("w2")
    for n in range(6):
        local.variables["n"] = n
        keeper.save_if_changed(local)
    existing = [key for key in thread_keys(thread) if redis_client.exists(key)]
    assert existing
    assert all(0 < int(redis_client.ttl(key)) <= AGENT_STATE_TTL_S for key in existing)
    checkpoints = list(keeper._saver.list({"configurable": {"thread_id": thread}}))
    assert len(checkpoints) <= 2


def test_an_unreadable_state_is_ignored_and_the_agent_starts_afresh(redis_client: Redis) -> None:
    thread = agent_thread_id("w3", None)
    keeper = AgentStateKeeper(redis_client, thread)
    keeper._graph.update_state(
        {"configurable": {"thread_id": thread}}, {"state": {"agent_id": 5}}, as_node="keep"
    )
    assert AgentStateKeeper(redis_client, thread).restore() is None
