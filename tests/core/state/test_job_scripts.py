"""The exactly-once core: every branch of the job-record scripts, against a real redis-server.

Each test drives :class:`~project.core.state.jobs.JobStore` (built as the runtime
builds it) into one branch of one Lua script and checks both what the call returned
and what Redis holds afterwards: the job's record, the ``jobs:open`` and
``worker:jobs:{id}`` indexes, the counters, the causal chain, replay markers and the
``events:jobs`` announcements. A branch that refuses to act must leave the database
exactly as it was.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from redis import Redis
from redis.client import PubSub

from project.core.a2a.envelope import Envelope, Keyring, MessageType, Signer, now_ms
from project.core.a2a.replay import marker_ttl_ms, seen_key
from project.core.constants import (
    CHANNEL_JOBS,
    COORDINATOR,
    DISTRIBUTOR,
    KEY_INTENT,
    KEY_INTENTS,
    KEY_JOB,
    KEY_JOB_CHAIN,
    KEY_JOBS_COUNT,
    KEY_JOBS_OPEN,
    KEY_STATS_JOBS,
    KEY_WORKER_JOBS,
)
from project.core.models import JobSpec, JobStatus, Priority, Requirements
from project.core.state.jobs import (
    AssignKind,
    AssignOutcome,
    FinishKind,
    FinishOutcome,
    JobStore,
    StartKind,
    chain_link,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

SIGNER = Signer(Keyring({"job-scripts": b"j" * 32}), ttl_s=600)
RESULT_TTL_S = 3_600
MAX_ATTEMPTS = 3
SPEC = JobSpec(
    task_type="compute",
    payload={"operation": "sum", "values": [1, 2]},
    priority=Priority.HIGH,
    requirements=Requirements(tags=["cpu"]),
)
W1, W2 = "w1", "w2"


# --- helpers ---------------------------------------------------------------------------


class JobEvents:
    """Reads the ``events:jobs`` announcements of one job, in order.

    :meth:`of` publishes a marker of its own and reads up to it: Redis delivers one
    channel's messages in order, so every announcement made before the call has
    arrived by then, and "no announcement" is a fact rather than a timeout.
    """

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._pubsub: PubSub = redis.pubsub()
        self._pubsub.subscribe(CHANNEL_JOBS)
        confirmation = self._pubsub.get_message(timeout=5)
        assert confirmation is not None and confirmation["type"] == "subscribe"

    def of(self, job_id: str) -> list[dict[str, Any]]:
        """The job's announcements since the last call."""
        marker = uuid.uuid4().hex
        self._redis.publish(CHANNEL_JOBS, json.dumps({"marker": marker}))
        events: list[dict[str, Any]] = []
        while True:
            message = self._pubsub.get_message(timeout=5)
            assert message is not None, "the marker never arrived on events:jobs"
            data = json.loads(message["data"])
            if data.get("marker") == marker:
                return events
            if data.get("job_id") == job_id:
                events.append(data)

    def close(self) -> None:
        self._pubsub.close()


def announced(events: list[dict[str, Any]]) -> list[tuple[str, int, str, str]]:
    """Status, epoch, assignee and signed EVENT ('' for none) of final announcements."""
    return [(e["status"], e["epoch"], e["assignee"], e["event"]) for e in events]


def dump(redis: Redis) -> dict[str, tuple[str, object, bool]]:
    """Every key of the database: its type, its value and whether it expires."""
    state: dict[str, tuple[str, object, bool]] = {}
    for key in sorted(redis.keys("*")):  # type: ignore[union-attr]
        kind = redis.type(key)
        value: object
        if kind == "hash":
            value = redis.hgetall(key)
        elif kind == "zset":
            value = redis.zrange(key, 0, -1, withscores=True)
        elif kind == "set":
            value = sorted(redis.smembers(key))  # type: ignore[arg-type]
        elif kind == "list":
            value = redis.lrange(key, 0, -1)
        else:
            value = redis.get(key)
        state[key] = (str(kind), value, redis.ttl(key) != -1)
    return state


def record(redis: Redis, job_id: str) -> dict[str, str]:
    """The job's raw hash (with the scripts' own fields: runs, exec_msg, dispatch_msg)."""
    raw: dict[str, str] = redis.hgetall(KEY_JOB + job_id)  # type: ignore[assignment]
    return raw


def counts(redis: Redis) -> dict[str, str]:
    raw: dict[str, str] = redis.hgetall(KEY_JOBS_COUNT)  # type: ignore[assignment]
    return raw


def stats(redis: Redis) -> dict[str, str]:
    raw: dict[str, str] = redis.hgetall(KEY_STATS_JOBS)  # type: ignore[assignment]
    return raw


def worker_jobs(redis: Redis, worker_id: str) -> set[str]:
    members: set[str] = redis.smembers(KEY_WORKER_JOBS + worker_id)  # type: ignore[assignment]
    return members


def open_jobs(redis: Redis) -> dict[str, int]:
    pairs: list[tuple[str, float]] = redis.zrange(KEY_JOBS_OPEN, 0, -1, withscores=True)  # type: ignore[assignment]
    return {job_id: int(score) for job_id, score in pairs}


def chain(redis: Redis, job_id: str) -> list[str]:
    links: list[str] = redis.lrange(KEY_JOB_CHAIN + job_id, 0, -1)  # type: ignore[assignment]
    return links


def dispatch_order(job_id: str) -> Envelope:
    """The coordinator's dispatch request to the distributors (``assign``'s envelope)."""
    return SIGNER.request(
        sender=COORDINATOR, recipient=DISTRIBUTOR, payload={"job_id": job_id}, request_id=job_id
    )


def work_order(dispatch: Envelope, worker_id: str, epoch: int) -> Envelope:
    """The distributor's work order to a worker (``start``'s envelope)."""
    payload = {"job_id": dispatch.payload["job_id"], "epoch": epoch}
    return SIGNER.request(sender=DISTRIBUTOR, recipient=worker_id, payload=payload, parent=dispatch)


def work_report(order: Envelope) -> Envelope:
    """The worker's response to a work order (``finish``'s cause)."""
    return SIGNER.reply(
        order, MessageType.RESPONSE, {"status": "COMPLETED"}, sender=order.recipient
    )


def new_job(store: JobStore) -> str:
    job_id = uuid.uuid4().hex
    assert store.create(job_id, SPEC, deadline_ms=now_ms() + 30_000)
    return job_id


def assign(
    store: JobStore,
    job_id: str,
    *,
    expected_epoch: int,
    worker_id: str = W1,
    dispatch: Envelope | None = None,
    max_attempts: int = MAX_ATTEMPTS,
) -> AssignOutcome:
    return store.assign(
        job_id,
        expected_epoch=expected_epoch,
        worker_id=worker_id,
        max_attempts=max_attempts,
        dispatch=dispatch or dispatch_order(job_id),
    )


def assigned_job(store: JobStore, worker_id: str = W1) -> tuple[str, Envelope]:
    """A job ASSIGNED to ``worker_id`` at epoch 1, and the dispatch that assigned it."""
    job_id = new_job(store)
    dispatch = dispatch_order(job_id)
    assert assign(store, job_id, expected_epoch=0, worker_id=worker_id, dispatch=dispatch) == (
        AssignOutcome(AssignKind.OK, epoch=1)
    )
    return job_id, dispatch


def started_job(store: JobStore, worker_id: str = W1) -> tuple[str, Envelope]:
    """A job IN_PROGRESS on ``worker_id`` at epoch 1, and the work order that started it."""
    job_id, dispatch = assigned_job(store, worker_id)
    order = work_order(dispatch, worker_id, 1)
    assert start(store, job_id, epoch=1, worker_id=worker_id, order=order) is StartKind.RUN
    return job_id, order


def start(
    store: JobStore,
    job_id: str,
    *,
    epoch: int,
    worker_id: str,
    order: Envelope,
    max_runs: int = MAX_ATTEMPTS,
) -> StartKind:
    return store.start(job_id, epoch=epoch, worker_id=worker_id, request=order, max_runs=max_runs)


@pytest.fixture
def store(redis_client: Redis) -> JobStore:
    """A job store on the scratch database, built as :class:`Runtime` builds it."""
    return JobStore(redis_client, result_ttl_s=RESULT_TTL_S)


@pytest.fixture
def events(redis_client: Redis) -> Iterator[JobEvents]:
    listener = JobEvents(redis_client)
    yield listener
    listener.close()


# --- create ----------------------------------------------------------------------------


def test_create_records_a_pending_job(
    store: JobStore, redis_client: Redis, events: JobEvents
) -> None:
    job_id = uuid.uuid4().hex
    before = now_ms()

    assert store.create(job_id, SPEC, deadline_ms=before + 30_000) is True

    raw = record(redis_client, job_id)
    created = int(raw["created_ms"])
    assert before <= created <= now_ms()
    assert raw == {
        "id": job_id,
        "task_type": "compute",
        "status": "PENDING",
        "epoch": "0",
        "attempts": "0",
        "assignee": "",
        "priority": "high",
        "created_ms": str(created),
        "updated_ms": str(created),
        "deadline_ms": str(before + 30_000),
        "payload": '{"operation":"sum","values":[1,2]}',
        "requirements": SPEC.requirements.model_dump_json(),
    }
    job = store.get(job_id)
    assert job is not None
    assert (job.status, job.payload, job.requirements) == (
        JobStatus.PENDING,
        SPEC.payload,
        SPEC.requirements,
    )
    assert redis_client.ttl(KEY_JOB + job_id) == -1
    assert open_jobs(redis_client) == {job_id: created}
    assert counts(redis_client) == {"PENDING": "1"}
    assert chain(redis_client, job_id) == []
    assert not redis_client.keys(KEY_WORKER_JOBS + "*")
    assert events.of(job_id) == [{"job_id": job_id, "status": "PENDING", "epoch": 0}]


def test_create_drops_the_submit_intent(store: JobStore, redis_client: Redis) -> None:
    job_id, other = uuid.uuid4().hex, uuid.uuid4().hex
    store.record_intents({job_id: {"task_type": "compute"}, other: {"task_type": "compute"}})

    assert store.create(job_id, SPEC, deadline_ms=now_ms() + 30_000)

    assert redis_client.exists(KEY_INTENT + job_id) == 0
    assert redis_client.zrange(KEY_INTENTS, 0, -1) == [other]
    assert redis_client.exists(KEY_INTENT + other) == 1


def test_duplicate_create_returns_false_and_changes_nothing_but_the_intent(
    store: JobStore, redis_client: Redis, events: JobEvents
) -> None:
    job_id = new_job(store)
    events.of(job_id)
    before = dump(redis_client)
    # The submit is re-published (an intent from the health check) after the job exists.
    store.record_intents({job_id: {"task_type": "generic"}})
    other_spec = JobSpec(task_type="generic", payload={"echo": "x"}, priority=Priority.LOW)

    assert store.create(job_id, other_spec, deadline_ms=now_ms() + 1) is False

    # The intent is answered (dropped), and nothing else moved.
    assert redis_client.exists(KEY_INTENT + job_id) == 0
    assert redis_client.zscore(KEY_INTENTS, job_id) is None
    assert dump(redis_client) == before
    assert record(redis_client, job_id)["task_type"] == "compute"
    assert counts(redis_client) == {"PENDING": "1"}
    assert events.of(job_id) == []


# --- assign ----------------------------------------------------------------------------


def test_assign_ok_takes_a_pending_job(
    store: JobStore, redis_client: Redis, events: JobEvents
) -> None:
    job_id = new_job(store)
    events.of(job_id)
    dispatch = dispatch_order(job_id)
    before = now_ms()

    outcome = assign(store, job_id, expected_epoch=0, worker_id=W1, dispatch=dispatch)

    assert outcome == AssignOutcome(AssignKind.OK, epoch=1)
    raw = record(redis_client, job_id)
    updated = int(raw["updated_ms"])
    assert before <= updated <= now_ms()
    assert (raw["status"], raw["epoch"], raw["attempts"], raw["assignee"]) == (
        "ASSIGNED",
        "1",
        "1",
        W1,
    )
    assert raw["dispatch_msg"] == dispatch.id
    assert "runs" not in raw and "result" not in raw
    assert worker_jobs(redis_client, W1) == {job_id}
    assert open_jobs(redis_client) == {job_id: updated}
    assert counts(redis_client) == {"PENDING": "1", "ASSIGNED": "1"}
    assert chain(redis_client, job_id) == [chain_link(dispatch)]
    assert events.of(job_id) == [
        {"job_id": job_id, "status": "ASSIGNED", "epoch": 1, "assignee": W1}
    ]


def test_assign_ok_again_moves_the_job_to_the_new_worker(
    store: JobStore, redis_client: Redis, events: JobEvents
) -> None:
    job_id, first = assigned_job(store, W1)
    events.of(job_id)
    second = dispatch_order(job_id)

    outcome = assign(store, job_id, expected_epoch=1, worker_id=W2, dispatch=second)

    assert outcome == AssignOutcome(AssignKind.OK, epoch=2)
    raw = record(redis_client, job_id)
    assert (raw["status"], raw["epoch"], raw["attempts"], raw["assignee"]) == (
        "ASSIGNED",
        "2",
        "2",
        W2,
    )
    assert raw["dispatch_msg"] == second.id
    assert worker_jobs(redis_client, W1) == set()
    assert worker_jobs(redis_client, W2) == {job_id}
    assert open_jobs(redis_client) == {job_id: int(raw["updated_ms"])}
    assert counts(redis_client) == {"PENDING": "1", "ASSIGNED": "2"}
    assert chain(redis_client, job_id) == [chain_link(first), chain_link(second)]
    assert events.of(job_id) == [
        {"job_id": job_id, "status": "ASSIGNED", "epoch": 2, "assignee": W2}
    ]


def test_assign_redo_when_the_same_dispatch_already_assigned_it(
    store: JobStore, redis_client: Redis, events: JobEvents
) -> None:
    job_id, dispatch = assigned_job(store, W1)
    events.of(job_id)
    before = dump(redis_client)

    # The same dispatch message, redelivered: it recorded the assignment but may not
    # have sent the work order. Whoever it names now, the answer is the first choice.
    outcome = assign(store, job_id, expected_epoch=0, worker_id=W2, dispatch=dispatch)

    assert outcome == AssignOutcome(AssignKind.REDO, epoch=1, assignee=W1)
    assert dump(redis_client) == before
    assert worker_jobs(redis_client, W1) == {job_id}
    assert worker_jobs(redis_client, W2) == set()
    assert events.of(job_id) == []


def test_assign_stale_when_another_dispatch_moved_the_job(
    store: JobStore, redis_client: Redis, events: JobEvents
) -> None:
    job_id, _ = assigned_job(store, W1)
    events.of(job_id)
    before = dump(redis_client)

    outcome = assign(store, job_id, expected_epoch=0, worker_id=W2)

    assert outcome == AssignOutcome(AssignKind.STALE, epoch=1)
    assert dump(redis_client) == before
    raw = record(redis_client, job_id)
    assert (raw["status"], raw["epoch"], raw["assignee"]) == ("ASSIGNED", "1", W1)
    assert events.of(job_id) == []


def test_assign_stale_when_the_same_dispatch_comes_back_after_the_job_started(
    store: JobStore, redis_client: Redis, events: JobEvents
) -> None:
    job_id, dispatch = assigned_job(store, W1)
    assert (
        start(store, job_id, epoch=1, worker_id=W1, order=work_order(dispatch, W1, 1))
        is StartKind.RUN
    )
    events.of(job_id)
    before = dump(redis_client)

    # A redo only re-sends an order nobody started yet.
    outcome = assign(store, job_id, expected_epoch=0, worker_id=W1, dispatch=dispatch)

    assert outcome == AssignOutcome(AssignKind.STALE, epoch=1)
    assert dump(redis_client) == before
    assert record(redis_client, job_id)["status"] == "IN_PROGRESS"
    assert events.of(job_id) == []


def test_assign_exhausted_when_every_attempt_is_used(
    store: JobStore, redis_client: Redis, events: JobEvents
) -> None:
    job_id = new_job(store)
    assert (
        assign(store, job_id, expected_epoch=0, worker_id=W1, max_attempts=2).kind is AssignKind.OK
    )
    assert (
        assign(store, job_id, expected_epoch=1, worker_id=W2, max_attempts=2).kind is AssignKind.OK
    )
    events.of(job_id)
    before = dump(redis_client)

    outcome = assign(store, job_id, expected_epoch=2, worker_id=W1, max_attempts=2)

    assert outcome == AssignOutcome(AssignKind.EXHAUSTED, epoch=2)
    assert dump(redis_client) == before
    raw = record(redis_client, job_id)
    assert (raw["status"], raw["epoch"], raw["attempts"], raw["assignee"]) == (
        "ASSIGNED",
        "2",
        "2",
        W2,
    )
    assert worker_jobs(redis_client, W2) == {job_id}
    assert job_id in open_jobs(redis_client)
    assert events.of(job_id) == []


@pytest.mark.parametrize("final", [JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.ABANDONED])
def test_assign_final_refuses_a_finished_job(
    final: JobStatus, store: JobStore, redis_client: Redis, events: JobEvents
) -> None:
    job_id, _ = assigned_job(store, W1)
    assert store.finish(job_id, epoch=1, status=final).kind is FinishKind.RECORDED
    events.of(job_id)
    before = dump(redis_client)

    outcome = assign(store, job_id, expected_epoch=1, worker_id=W2)

    assert outcome == AssignOutcome(AssignKind.FINAL, status=final.value)
    assert dump(redis_client) == before
    assert worker_jobs(redis_client, W2) == set()
    assert events.of(job_id) == []


def test_assign_missing_creates_nothing(
    store: JobStore, redis_client: Redis, events: JobEvents
) -> None:
    job_id = uuid.uuid4().hex

    assert assign(store, job_id, expected_epoch=0) == AssignOutcome(AssignKind.MISSING)

    assert dump(redis_client) == {}
    assert events.of(job_id) == []


# --- start -----------------------------------------------------------------------------


def test_start_run_moves_the_job_in_progress(
    store: JobStore, redis_client: Redis, events: JobEvents
) -> None:
    job_id, dispatch = assigned_job(store, W1)
    events.of(job_id)
    order = work_order(dispatch, W1, 1)
    before = now_ms()

    assert start(store, job_id, epoch=1, worker_id=W1, order=order) is StartKind.RUN

    raw = record(redis_client, job_id)
    updated = int(raw["updated_ms"])
    assert before <= updated <= now_ms()
    assert (raw["status"], raw["epoch"], raw["assignee"], raw["attempts"]) == (
        "IN_PROGRESS",
        "1",
        W1,
        "1",
    )
    assert (raw["exec_msg"], raw["runs"]) == (order.id, "1")
    assert "result" not in raw
    assert worker_jobs(redis_client, W1) == {job_id}
    assert job_id in open_jobs(redis_client)
    assert counts(redis_client) == {"PENDING": "1", "ASSIGNED": "1", "IN_PROGRESS": "1"}
    assert stats(redis_client) == {"handler_executions": "1"}
    assert chain(redis_client, job_id) == [chain_link(dispatch), chain_link(order)]
    assert events.of(job_id) == [
        {"job_id": job_id, "status": "IN_PROGRESS", "epoch": 1, "assignee": W1}
    ]


def test_start_rerun_counts_a_redelivery_and_moves_nothing_else(
    store: JobStore, redis_client: Redis, events: JobEvents
) -> None:
    job_id, order = started_job(store, W1)
    events.of(job_id)
    before = record(redis_client, job_id)
    chain_before = chain(redis_client, job_id)

    # Celery redelivers the same work order after the worker process died mid-way.
    assert start(store, job_id, epoch=1, worker_id=W1, order=order) is StartKind.RERUN

    assert record(redis_client, job_id) == {**before, "runs": "2"}
    assert stats(redis_client) == {"handler_executions": "2", "redeliveries": "1"}
    assert counts(redis_client) == {"PENDING": "1", "ASSIGNED": "1", "IN_PROGRESS": "1"}
    assert chain(redis_client, job_id) == chain_before
    assert worker_jobs(redis_client, W1) == {job_id}
    assert events.of(job_id) == []


@pytest.mark.parametrize(
    ("epoch", "worker_id"),
    [(0, W1), (2, W1), (1, W2)],
    ids=["older-epoch", "newer-epoch", "other-worker"],
)
def test_start_stale_for_another_epoch_or_worker(
    epoch: int, worker_id: str, store: JobStore, redis_client: Redis, events: JobEvents
) -> None:
    job_id, dispatch = assigned_job(store, W1)
    events.of(job_id)
    before = dump(redis_client)

    order = work_order(dispatch, worker_id, epoch)
    assert start(store, job_id, epoch=epoch, worker_id=worker_id, order=order) is StartKind.STALE

    assert dump(redis_client) == before
    assert "runs" not in record(redis_client, job_id)
    assert events.of(job_id) == []


def test_start_stale_for_another_order_of_a_running_job(
    store: JobStore, redis_client: Redis, events: JobEvents
) -> None:
    job_id, _ = started_job(store, W1)
    events.of(job_id)
    before = dump(redis_client)

    # Same epoch and worker, but not the message that started the job: not a redelivery.
    other = work_order(dispatch_order(job_id), W1, 1)
    assert start(store, job_id, epoch=1, worker_id=W1, order=other) is StartKind.STALE

    assert dump(redis_client) == before
    assert record(redis_client, job_id)["runs"] == "1"
    assert events.of(job_id) == []


def test_start_stale_for_a_finished_job(
    store: JobStore, redis_client: Redis, events: JobEvents
) -> None:
    job_id, order = started_job(store, W1)
    assert (
        store.finish(job_id, epoch=1, status=JobStatus.COMPLETED, result=3).kind
        is FinishKind.RECORDED
    )
    events.of(job_id)
    before = dump(redis_client)

    # Even the very order that ran it: the job is no longer IN_PROGRESS.
    assert start(store, job_id, epoch=1, worker_id=W1, order=order) is StartKind.STALE

    assert dump(redis_client) == before
    assert record(redis_client, job_id)["status"] == "COMPLETED"
    assert events.of(job_id) == []


def test_start_exhausted_for_a_new_epoch_of_a_poison_job(
    store: JobStore, redis_client: Redis, events: JobEvents
) -> None:
    # The job ran once on w1 (whose process died); the distributor re-assigned it to w2.
    job_id, _ = started_job(store, W1)
    dispatch = dispatch_order(job_id)
    assert (
        assign(store, job_id, expected_epoch=1, worker_id=W2, dispatch=dispatch).kind
        is AssignKind.OK
    )
    events.of(job_id)
    before = record(redis_client, job_id)
    stats_before = stats(redis_client)
    chain_before = chain(redis_client, job_id)
    order = work_order(dispatch, W2, 2)

    assert (
        start(store, job_id, epoch=2, worker_id=W2, order=order, max_runs=1) is StartKind.EXHAUSTED
    )

    # Only the run counter moved: the job stays ASSIGNED for the worker to fail it.
    assert record(redis_client, job_id) == {**before, "runs": "2"}
    assert before["status"] == "ASSIGNED"
    assert stats(redis_client) == stats_before == {"handler_executions": "1"}
    assert counts(redis_client) == {"PENDING": "1", "ASSIGNED": "2", "IN_PROGRESS": "1"}
    assert chain(redis_client, job_id) == chain_before
    assert worker_jobs(redis_client, W2) == {job_id}
    assert events.of(job_id) == []


def test_start_exhausted_for_a_redelivery_past_the_bound(
    store: JobStore, redis_client: Redis, events: JobEvents
) -> None:
    job_id, order = started_job(store, W1)
    events.of(job_id)
    before = record(redis_client, job_id)

    assert (
        start(store, job_id, epoch=1, worker_id=W1, order=order, max_runs=1) is StartKind.EXHAUSTED
    )

    assert record(redis_client, job_id) == {**before, "runs": "2"}
    assert stats(redis_client) == {"handler_executions": "1"}
    assert events.of(job_id) == []


def test_start_missing_is_stale_and_creates_nothing(
    store: JobStore, redis_client: Redis, events: JobEvents
) -> None:
    job_id = uuid.uuid4().hex
    order = work_order(dispatch_order(job_id), W1, 1)

    # The script answers 'missing'; for the worker that is one more order to drop.
    assert start(store, job_id, epoch=1, worker_id=W1, order=order) is StartKind.STALE

    assert dump(redis_client) == {}
    assert events.of(job_id) == []


# --- finish ----------------------------------------------------------------------------


def test_finish_recorded_closes_the_job_and_marks_its_order_done(
    store: JobStore, redis_client: Redis, events: JobEvents
) -> None:
    job_id, order = started_job(store, W1)
    events.of(job_id)
    report = work_report(order)
    chain_before = chain(redis_client, job_id)
    longest_marker_ms = marker_ttl_ms(report)  # it only shrinks as the clock moves on
    before = now_ms()

    outcome = store.finish(
        job_id,
        epoch=1,
        status=JobStatus.COMPLETED,
        result={"sum": 3},
        cause=report,
        done_ids=(order.id,),
    )

    assert outcome == FinishOutcome(FinishKind.RECORDED, status="COMPLETED")
    raw = record(redis_client, job_id)
    finished = int(raw["finished_ms"])
    assert before <= finished <= now_ms()
    assert raw["updated_ms"] == raw["finished_ms"]
    assert (raw["status"], raw["epoch"], raw["assignee"]) == ("COMPLETED", "1", W1)
    assert (raw["result"], raw["error"]) == ('{"sum":3}', "null")
    job = store.get(job_id)
    assert job is not None
    assert (job.status, job.result, job.error) == (JobStatus.COMPLETED, {"sum": 3}, None)
    assert worker_jobs(redis_client, W1) == set()
    assert open_jobs(redis_client) == {}
    assert counts(redis_client) == {
        "PENDING": "1",
        "ASSIGNED": "1",
        "IN_PROGRESS": "1",
        "COMPLETED": "1",
    }
    assert chain(redis_client, job_id) == [*chain_before, chain_link(report)]
    assert 0 < redis_client.ttl(KEY_JOB + job_id) <= RESULT_TTL_S
    assert 0 < redis_client.ttl(KEY_JOB_CHAIN + job_id) <= RESULT_TTL_S
    assert redis_client.get(seen_key(order.id)) == "done"
    assert 0 < redis_client.pttl(seen_key(order.id)) <= longest_marker_ms
    assert redis_client.get(seen_key(report.id)) is None
    assert announced(events.of(job_id)) == [("COMPLETED", 1, W1, "")]


def test_finish_recorded_without_a_cause_for_a_job_nobody_took(
    store: JobStore, redis_client: Redis, events: JobEvents
) -> None:
    # The coordinator abandons a PENDING job whose deadline passed: epoch 0, no assignee.
    job_id = new_job(store)
    events.of(job_id)
    error = {"type": "DeadlineExceeded", "message": "no eligible worker"}

    outcome = store.finish(job_id, epoch=0, status=JobStatus.ABANDONED, error=error)

    assert outcome == FinishOutcome(FinishKind.RECORDED, status="ABANDONED")
    raw = record(redis_client, job_id)
    assert (raw["status"], raw["epoch"], raw["assignee"]) == ("ABANDONED", "0", "")
    assert (raw["result"], json.loads(raw["error"])) == ("null", error)
    assert open_jobs(redis_client) == {}
    assert not redis_client.keys(KEY_WORKER_JOBS + "*")
    assert counts(redis_client) == {"PENDING": "1", "ABANDONED": "1"}
    assert redis_client.exists(KEY_JOB_CHAIN + job_id) == 0
    assert 0 < redis_client.ttl(KEY_JOB + job_id) <= RESULT_TTL_S
    assert not redis_client.keys(seen_key("*"))
    assert announced(events.of(job_id)) == [("ABANDONED", 0, "", "")]


def test_finish_recorded_with_the_signed_event_chains_and_announces_it(
    store: JobStore, redis_client: Redis, events: JobEvents
) -> None:
    job_id, order = started_job(store, W1)
    events.of(job_id)
    report = work_report(order)
    event = SIGNER.reply(report, MessageType.EVENT, {"job_id": job_id}, sender=DISTRIBUTOR)
    chain_before = chain(redis_client, job_id)

    outcome = store.finish(
        job_id,
        epoch=1,
        status=JobStatus.FAILED,
        error={"type": "E", "message": "m"},
        cause=report,
        event=event,
        done_ids=(order.id,),
    )

    assert outcome == FinishOutcome(FinishKind.RECORDED, status="FAILED")
    assert record(redis_client, job_id)["status"] == "FAILED"
    assert chain(redis_client, job_id) == [*chain_before, chain_link(report), chain_link(event)]
    assert counts(redis_client)["FAILED"] == "1"
    (announcement,) = events.of(job_id)
    assert announced([announcement])[0][:3] == ("FAILED", 1, W1)
    assert json.loads(announcement["event"]) == event.to_wire()


@pytest.mark.parametrize(
    ("first", "result", "error"),
    [
        (JobStatus.COMPLETED, {"sum": 3}, None),
        (JobStatus.FAILED, None, {"type": "ValueError", "message": "bad values"}),
    ],
    ids=["completed", "failed"],
)
def test_finish_already_returns_the_first_result_and_changes_nothing(
    first: JobStatus,
    result: Any,
    error: dict[str, str] | None,
    store: JobStore,
    redis_client: Redis,
    events: JobEvents,
) -> None:
    job_id, order = started_job(store, W1)
    report = work_report(order)
    done = (order.id,)
    recorded = store.finish(
        job_id, epoch=1, status=first, result=result, error=error, cause=report, done_ids=done
    )
    assert recorded.kind is FinishKind.RECORDED
    events.of(job_id)
    before = dump(redis_client)

    # A second completion of the same epoch (a redelivered report, or a late duplicate).
    late = work_report(order)
    outcome = store.finish(
        job_id,
        epoch=1,
        status=JobStatus.COMPLETED,
        result="late",
        cause=late,
        done_ids=(late.id,),
    )

    assert outcome == FinishOutcome(
        FinishKind.ALREADY, status=first.value, result=result, error=error
    )
    assert dump(redis_client) == before
    assert redis_client.get(seen_key(late.id)) is None
    job = store.get(job_id)
    assert job is not None
    assert (job.status, job.result, job.error) == (first, result, error)
    assert events.of(job_id) == []


def test_finish_stale_for_an_older_epoch(
    store: JobStore, redis_client: Redis, events: JobEvents
) -> None:
    # w1 started the job, was declared dead, and the job went to w2 at epoch 2.
    job_id, order = started_job(store, W1)
    assert assign(store, job_id, expected_epoch=1, worker_id=W2).kind is AssignKind.OK
    events.of(job_id)
    before = dump(redis_client)

    report = work_report(order)
    outcome = store.finish(
        job_id, epoch=1, status=JobStatus.COMPLETED, result=3, cause=report, done_ids=(order.id,)
    )

    assert outcome == FinishOutcome(FinishKind.STALE, status="ASSIGNED")
    assert dump(redis_client) == before
    raw = record(redis_client, job_id)
    assert (raw["status"], raw["epoch"], raw["assignee"]) == ("ASSIGNED", "2", W2)
    assert "result" not in raw
    assert worker_jobs(redis_client, W2) == {job_id}
    assert redis_client.get(seen_key(order.id)) is None
    assert events.of(job_id) == []


def test_finish_missing_creates_nothing(
    store: JobStore, redis_client: Redis, events: JobEvents
) -> None:
    job_id = uuid.uuid4().hex
    order = work_order(dispatch_order(job_id), W1, 1)

    outcome = store.finish(
        job_id,
        epoch=1,
        status=JobStatus.COMPLETED,
        result=3,
        cause=work_report(order),
        done_ids=(order.id,),
    )

    assert outcome == FinishOutcome(FinishKind.MISSING)
    assert dump(redis_client) == {}
    assert events.of(job_id) == []


def test_finish_refuses_a_status_that_is_not_final(store: JobStore, redis_client: Redis) -> None:
    job_id, _ = assigned_job(store, W1)
    before = dump(redis_client)

    with pytest.raises(ValueError, match="not a final status"):
        store.finish(job_id, epoch=1, status=JobStatus.IN_PROGRESS)

    assert dump(redis_client) == before


# --- the causal chain ------------------------------------------------------------------


def test_append_chain_appends_an_envelope_once(store: JobStore, redis_client: Redis) -> None:
    job_id, dispatch = assigned_job(store, W1)
    event = SIGNER.reply(dispatch, MessageType.EVENT, {"job_id": job_id}, sender=DISTRIBUTOR)

    assert store.append_chain(job_id, event) is True
    assert store.append_chain(job_id, event) is False

    assert chain(redis_client, job_id) == [chain_link(dispatch), chain_link(event)]
    assert [link["id"] for link in store.chain(job_id)] == [dispatch.id, event.id]
