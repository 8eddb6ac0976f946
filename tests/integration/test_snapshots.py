"""Local-state snapshots: saved to Redis, restored by a new process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import redis_url
from redis import Redis

from project.core.errors import StateError
from project.core.models import AgentStatus, JobStatus, LocalAgentState, Task
from project.core.snapshots import (
    SnapshotKeeper,
    load_snapshot,
    load_snapshots,
    save_snapshot,
    snapshot_id_for,
    snapshot_key,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

# Build a state with something in every field, save it, print what was saved.
_SAVER = r"""
import sys
from project.core.models import AgentStatus, JobStatus, LocalAgentState, Task
from project.core.redis_store import connect_redis
from project.core.snapshots import save_snapshot

state = LocalAgentState(agent_id="w7", tier="worker", status=AgentStatus.BUSY, history_limit=3)
state.local_tasks["j1"] = Task(job_id="j1", task_type="compute", epoch=2,
                               status=JobStatus.IN_PROGRESS, started_ms=1_700_000_000_000)
for n in range(5):
    state.record({"job_id": f"j{n}", "event": "COMPLETED", "ms": n / 3})
state.variables.update({"finished": {"COMPLETED": 5}, "ratio": 0.1, "none": None})
state.metadata["host"] = "h\u00e9"
print(save_snapshot(connect_redis(sys.argv[1]), state))
"""

# A new process: load the snapshot and print it.
_LOADER = r"""
import sys
from project.core.redis_store import connect_redis
from project.core.snapshots import load_snapshot

state = load_snapshot(connect_redis(sys.argv[1]), sys.argv[2])
print("null" if state is None else state.model_dump_json())
"""


def run(code: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_saved_state_is_restored_equal_by_a_new_process(redis_client: Redis) -> None:
    saved = LocalAgentState.model_validate_json(run(_SAVER, redis_url(15)))
    assert len(saved.history) == 3 and saved.local_tasks["j1"].epoch == 2

    restored = LocalAgentState.model_validate_json(run(_LOADER, redis_url(15), "w7"))
    assert restored == saved
    assert load_snapshot(redis_client, "w7") == saved
    assert run(_LOADER, redis_url(15), "nobody") == "null"


def test_snapshots_expire_eventually(redis_client: Redis) -> None:
    save_snapshot(redis_client, LocalAgentState(agent_id="w1", tier="worker"))
    assert 0 < int(redis_client.ttl(snapshot_key("w1"))) <= 7 * 24 * 3600


def test_unreadable_snapshot_is_an_error(redis_client: Redis) -> None:
    redis_client.set(snapshot_key("w1"), json.dumps({"agent_id": "w1"}))
    with pytest.raises(StateError, match="w1"):
        load_snapshot(redis_client, "w1")


def test_pool_processes_have_snapshots_of_their_own(redis_client: Redis) -> None:
    assert snapshot_id_for("w1", None) == "w1"
    assert snapshot_id_for("w1", 0) == "w1:0"
    for snapshot_id in ("w1", "w1:0", "w1:1"):
        save_snapshot(
            redis_client,
            LocalAgentState(agent_id="w1", tier="worker", metadata={"id": snapshot_id}),
            snapshot_id=snapshot_id,
        )
    found = load_snapshots(redis_client, ["w1", "w1:0", "w1:1", "w1:2"])
    assert sorted(found) == ["w1", "w1:0", "w1:1"]
    assert all(state.metadata["id"] == key for key, state in found.items())


def test_keeper_saves_only_changes_and_restores_once(redis_client: Redis) -> None:
    keeper = SnapshotKeeper(redis_client, "w1:0")
    assert keeper.restore() is None
    state = LocalAgentState(agent_id="w1", tier="worker")
    assert keeper.save_if_changed(state) is True
    assert keeper.save_if_changed(state) is False
    state.record({"job_id": "j1", "event": "COMPLETED"})
    state.status = AgentStatus.BUSY
    state.local_tasks["j1"] = Task(
        job_id="j1", task_type="compute", epoch=1, status=JobStatus.COMPLETED, started_ms=1
    )
    assert keeper.save_if_changed(state) is True

    again = SnapshotKeeper(redis_client, "w1:0")
    restored = again.restore()
    assert restored == state
    assert again.restore() is None, "a process restores its snapshot once"
    assert again.save_if_changed(state) is False, "an unchanged restored state is not rewritten"
