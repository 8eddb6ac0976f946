"""Optimistic writes to ``shared:distributor:{id}`` against a real redis-server."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from conftest import redis_url
from redis import Redis

from project.core.constants import CHANNEL_SHARED
from project.core.errors import ConflictError
from project.core.models import SharedAgentState
from project.core.state.connections import connect_redis
from project.core.state.shared import SharedStateStore, shared_key

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

PROCESSES = 4
INCREMENTS = 1_000
# Four writers with no pause between writes, on a busy 2-core machine: a writer
# descheduled between its read and its write was seen to lose 30-odd races in a
# row. The bound here is generous so the test checks lost updates, not starvation.
HAMMER_MAX_RETRIES = 1_000

# One writer process: wait for the start signal, then increment n INCREMENTS times.
_WRITER = r"""
import json, sys
from project.core.state.connections import connect_redis
from project.core.state.shared import SharedStateStore

url, writer, count, max_retries = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
redis = connect_redis(url)
store = SharedStateStore(redis, max_retries=max_retries)

def bump(state):
    state.task_summary["n"] = state.task_summary.get("n", 0) + 1

redis.incr("test:ready")
if redis.blpop(["test:go"], timeout=60) is None:
    sys.exit("no start signal")
longest = 0
for _ in range(count):
    before = store.conflicts_seen
    store.update("d1", bump, writer=writer)
    longest = max(longest, store.conflicts_seen - before)
print(json.dumps({"conflicts": store.conflicts_seen, "longest_losing_streak": longest}))
"""


def _bump(state: SharedAgentState) -> None:
    state.task_summary["n"] = state.task_summary.get("n", 0) + 1


def test_read_of_a_missing_state_is_none(redis_client: Redis) -> None:
    assert SharedStateStore(redis_client).read("nobody") is None


def test_update_creates_bumps_versions_and_reads_back(redis_client: Redis) -> None:
    store = SharedStateStore(redis_client)
    first = store.update("d1", _bump, writer="distributor")
    assert (first.version, first.distributor_version, first.coordinator_version) == (1, 1, 0)

    def assign(state: SharedAgentState) -> None:
        state.assigned_workers = ["w1", "w2"]
        state.status = "dead"

    second = store.update("d1", assign, writer="coordinator")
    assert (second.version, second.distributor_version, second.coordinator_version) == (2, 1, 1)
    assert store.read("d1") == second
    assert second.task_summary == {"n": 1} and second.assigned_workers == ["w1", "w2"]
    # Each field is readable JSON in the hash.
    raw = redis_client.hgetall(shared_key("d1"))
    assert raw["version"] == "2" and json.loads(raw["status"]) == "dead"


def test_unchanged_state_is_not_written(redis_client: Redis) -> None:
    store = SharedStateStore(redis_client)
    written = store.update("d1", _bump, writer="distributor")
    again = store.update("d1", lambda state: None, writer="coordinator")
    assert again == written and store.read("d1") == written


def test_every_write_is_published(redis_client: Redis) -> None:
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    pubsub.subscribe(CHANNEL_SHARED)
    try:
        SharedStateStore(redis_client).update("d1", _bump, writer="distributor")
        deadline = time.monotonic() + 10
        message = None
        while message is None and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.5)
        assert message is not None, "no announcement on the shared-state channel"
        assert json.loads(message["data"]) == {
            "distributor_id": "d1",
            "version": 1,
            "writer": "distributor",
            "status": "active",
        }
    finally:
        pubsub.close()


def test_conflict_error_when_a_concurrent_write_wins_and_no_retry_is_left(
    redis_client: Redis,
) -> None:
    store = SharedStateStore(redis_client)
    rival = SharedStateStore(redis_client)
    store.update("d1", _bump, writer="distributor")

    def mutate_while_rival_writes(state: SharedAgentState) -> None:
        # Runs between our read and our write: the rival's write lands in between.
        rival.update("d1", lambda s: s.assigned_workers.append("w9"), writer="coordinator")
        _bump(state)

    with pytest.raises(ConflictError, match="retries ran out"):
        store.update("d1", mutate_while_rival_writes, writer="distributor", max_retries=0)
    final = store.read("d1")
    assert final is not None
    assert final.task_summary == {"n": 1}, "the losing write must not land"
    assert final.assigned_workers == ["w9"] and final.version == 2
    assert store.conflicts_seen == 1 and store.conflicts() == 1


def test_a_lost_race_is_retried_on_a_fresh_read(redis_client: Redis) -> None:
    store = SharedStateStore(redis_client)
    rival = SharedStateStore(redis_client)
    store.update("d1", _bump, writer="distributor")
    calls = 0

    def mutate(state: SharedAgentState) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            rival.update("d1", _bump, writer="coordinator")
        _bump(state)

    written = store.update("d1", mutate, writer="distributor", max_retries=3)
    assert calls == 2 and store.conflicts_seen == 1
    assert written.task_summary == {"n": 3}, "no update may be lost"
    assert (written.version, written.coordinator_version, written.distributor_version) == (3, 1, 2)


def test_four_processes_times_a_thousand_increments_lose_nothing(redis_client: Redis) -> None:
    url = redis_url(15)
    writers = ["coordinator", "coordinator", "distributor", "distributor"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, url, writer, str(INCREMENTS), str(HAMMER_MAX_RETRIES)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for writer in writers
    ]
    try:
        deadline = time.monotonic() + 60
        while int(redis_client.get("test:ready") or 0) < PROCESSES:
            assert time.monotonic() < deadline, "writer processes did not start"
            assert all(p.poll() is None for p in procs), "a writer process died at start"
            time.sleep(0.05)
        started = time.monotonic()
        redis_client.rpush("test:go", *["go"] * PROCESSES)
        outputs = [p.communicate(timeout=120) for p in procs]
        elapsed = time.monotonic() - started
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
    reports = [json.loads(out) for out, _ in outputs]
    seen = [report["conflicts"] for report in reports]
    streak = max(report["longest_losing_streak"] for report in reports)

    final = SharedStateStore(connect_redis(url)).read("d1")
    assert final is not None
    total = PROCESSES * INCREMENTS
    assert final.task_summary["n"] == total
    assert final.version == total
    assert final.coordinator_version == final.distributor_version == total // 2
    stats = redis_client.hgetall("stats:shared_state")
    assert int(stats["writes"]) == total
    # Every race a writer lost was counted once, in Redis.
    assert int(stats.get("conflicts", 0)) == sum(seen)
    print(
        f"\n{PROCESSES}x{INCREMENTS} increments -> n={final.task_summary['n']} "
        f"in {elapsed:.2f}s, conflicts={sum(seen)} (per process {seen}), "
        f"longest losing streak {streak}"
    )
