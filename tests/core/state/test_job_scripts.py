"""The exactly-once core: every branch of the job-record scripts, against a real redis-server.

Each test drives :class:`~project.core.state.jobs.JobStore` (built as the runtime
builds it) into one branch of one Lua script and checks both what the call returned
and what Redis holds afterwards: the job's record, the ``jobs:open`` and
``worker:jobs:{id}`` indexes, the counters, the causal chain (the record's
``link:{epoch}:{step}`` fields), the job's event log (stream ``joblog:{id}``: one
``status`` event per transition), the submit intents and the ``events:jobs``
announcements. A branch that refuses to act must leave the database exactly as it was
(its event log included).

Replays need no markers of their own: a copy of a message whose job is final is
refused by the script of its hop (``assign`` and ``start`` answer ``final``, ``finish``
answers ``already``), and the tests below drive a copy into each of those answers.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from redis import Redis
from redis.client import PubSub
from support.envelopes import bare_envelope

from project.core.a2a.envelope import Envelope, Keyring, MessageType, Signer, now_ms
from project.core.constants import (
    CHANNEL_JOBS,
    COORDINATOR,
    DISTRIBUTOR,
    KEY_INTENTS,
    KEY_JOB,
    KEY_JOB_LOG,
    KEY_JOBS_COUNT,
    KEY_JOBS_OPEN,
    KEY_STATS_JOBS,
    KEY_WORKER_JOBS,
)
from project.core.models import JobSpec, JobStatus, Priority, Requirements
from project.core.state.jobs import (
    CHAIN_FIELD,
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
FINAL_STATUSES = [JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.ABANDONED]


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


PENDING_EVENT: dict[str, Any] = {"status": "PENDING", "epoch": 0}
"""The status event ``create`` appends to the new job's log."""


def assigned_event(epoch: int, worker_id: str) -> dict[str, Any]:
    """The status event ``assign`` appends."""
    return {"status": "ASSIGNED", "epoch": epoch, "worker": worker_id}


def started_event(epoch: int, worker_id: str) -> dict[str, Any]:
    """The status event ``start`` appends (first start only)."""
    return {"status": "IN_PROGRESS", "epoch": epoch, "worker": worker_id}


def final_event(
    status: JobStatus, epoch: int, result: Any = None, error: dict[str, str] | None = None
) -> dict[str, Any]:
    """The status event ``finish`` appends: the final status with the job's result."""
    return {"status": status.value, "epoch": epoch, "result": result, "error": error}


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


def dump_keyspace(redis: Redis) -> dict[Any, tuple[str, object, bool]]:
    """Every key of ``redis``'s database: its type, its value and whether it expires.

    With a client that does not decode responses it also reads binary values (checkpoints).
    """
    state: dict[Any, tuple[str, object, bool]] = {}
    for key in sorted(redis.keys("*")):  # type: ignore[union-attr]
        raw_kind = redis.type(key)
        kind = raw_kind.decode() if isinstance(raw_kind, bytes) else str(raw_kind)
        value: object
        if kind == "hash":
            value = redis.hgetall(key)
        elif kind == "zset":
            value = redis.zrange(key, 0, -1, withscores=True)
        elif kind == "set":
            value = sorted(redis.smembers(key))  # type: ignore[arg-type]
        elif kind == "list":
            value = redis.lrange(key, 0, -1)
        elif kind == "stream":
            value = redis.xrange(key)
        elif kind == "string":
            value = redis.get(key)
        else:
            raise AssertionError(f"{key!r} holds a {kind}, which dump_keyspace cannot read")
        state[key] = (kind, value, redis.ttl(key) != -1)
    return state


class JobsDb:
    """A job store on the scratch database, what the database holds, what was announced.

    The store is built as :class:`Runtime` builds it; the read-backs are raw Redis reads.
    """

    def __init__(self, redis: Redis, events: JobEvents) -> None:
        self.redis = redis
        self.events = events
        self.store = JobStore(redis, result_ttl_s=RESULT_TTL_S)

    # What the database holds.

    def dump(self) -> dict[str, tuple[str, object, bool]]:
        """Every key of the database: its type, its value and whether it expires."""
        return dump_keyspace(self.redis)

    def record(self, job_id: str) -> dict[str, str]:
        """The job's raw hash (with the scripts' own fields: runs, exec_msg, dispatch_msg)."""
        raw: dict[str, str] = self.redis.hgetall(KEY_JOB + job_id)  # type: ignore[assignment]
        return raw

    def counts(self) -> dict[str, str]:
        raw: dict[str, str] = self.redis.hgetall(KEY_JOBS_COUNT)  # type: ignore[assignment]
        return raw

    def stats(self) -> dict[str, str]:
        raw: dict[str, str] = self.redis.hgetall(KEY_STATS_JOBS)  # type: ignore[assignment]
        return raw

    def worker_jobs(self, worker_id: str) -> set[str]:
        key = KEY_WORKER_JOBS + worker_id
        members: set[str] = self.redis.smembers(key)  # type: ignore[assignment]
        return members

    def open_jobs(self) -> dict[str, int]:
        pairs: list[tuple[str, float]] = self.redis.zrange(  # type: ignore[assignment]
            KEY_JOBS_OPEN, 0, -1, withscores=True
        )
        return {job_id: int(score) for job_id, score in pairs}

    def log(self, job_id: str) -> list[tuple[str, int, dict[str, Any]]]:
        """The job's event log as stored: ``(k, ms, decoded d)`` per entry, oldest first."""
        entries: list[tuple[str, dict[str, str]]] = self.redis.xrange(  # type: ignore[assignment]
            KEY_JOB_LOG + job_id
        )
        for _, fields in entries:
            assert set(fields) == {"k", "ms", "d"}, fields
        return [(f["k"], int(f["ms"]), json.loads(f["d"])) for _, f in entries]

    def statuses(self, job_id: str) -> list[dict[str, Any]]:
        """The data of the job's ``status`` events, oldest first (every event is one)."""
        log = self.log(job_id)
        assert all(k == "status" for k, _, _ in log), log
        return [data for _, _, data in log]

    def chain(self, job_id: str) -> dict[str, str]:
        """The causal chain as stored: the record's ``link:{epoch:06d}:{step}`` fields."""
        return {k: v for k, v in self.record(job_id).items() if k.startswith(CHAIN_FIELD)}

    def expect_chain(self, job_id: str, links: dict[str, Envelope]) -> None:
        """The chain is exactly ``links`` (field -> envelope), and reads back in field order.

        Checks the raw fields and what :meth:`JobStore.chain` returns (oldest first).
        """
        assert self.chain(job_id) == {name: chain_link(e) for name, e in links.items()}
        assert self.store.chain(job_id) == [
            json.loads(chain_link(links[name])) for name in sorted(links)
        ]

    def intents(self) -> dict[str, dict[str, Any]]:
        """The submit intents (hash ``jobs:intents``): job id -> ``{"ms": ..., "call": ...}``."""
        raw: dict[str, str] = self.redis.hgetall(KEY_INTENTS)  # type: ignore[assignment]
        return {job_id: json.loads(intent) for job_id, intent in raw.items()}

    def keys(self) -> set[str]:
        """Every key of the database."""
        return set(self.redis.keys("*"))  # type: ignore[arg-type]

    def expiring_keys(self) -> set[str]:
        """The keys that have a TTL."""
        return {key for key, (_, _, expires) in self.dump().items() if expires}

    @contextmanager
    def unchanged(self, job_id: str) -> Iterator[None]:
        """The block leaves every key as it was and announces nothing about ``job_id``.

        The job's earlier announcements are read (and dropped) on the way in.
        """
        self.events.of(job_id)
        before = self.dump()
        yield
        assert self.dump() == before
        assert self.events.of(job_id) == []

    # Driving the scripts.

    def new_job(self) -> str:
        job_id = uuid.uuid4().hex
        assert self.store.create(job_id, SPEC, deadline_ms=now_ms() + 30_000)
        return job_id

    def assign(
        self,
        job_id: str,
        *,
        expected_epoch: int,
        worker_id: str = W1,
        dispatch: Envelope | None = None,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> AssignOutcome:
        return self.store.assign(
            job_id,
            expected_epoch=expected_epoch,
            worker_id=worker_id,
            max_attempts=max_attempts,
            dispatch=dispatch or dispatch_order(job_id),
        )

    def start(
        self,
        job_id: str,
        *,
        epoch: int,
        worker_id: str,
        order: Envelope,
        max_runs: int = MAX_ATTEMPTS,
    ) -> StartKind:
        return self.store.start(
            job_id, epoch=epoch, worker_id=worker_id, request=order, max_runs=max_runs
        )

    def assigned_job(self, worker_id: str = W1) -> tuple[str, Envelope]:
        """A job ASSIGNED to ``worker_id`` at epoch 1, and the dispatch that assigned it."""
        job_id = self.new_job()
        dispatch = dispatch_order(job_id)
        outcome = self.assign(job_id, expected_epoch=0, worker_id=worker_id, dispatch=dispatch)
        assert outcome == AssignOutcome(AssignKind.OK, epoch=1)
        return job_id, dispatch

    def started_job(self, worker_id: str = W1) -> tuple[str, Envelope]:
        """A job IN_PROGRESS on ``worker_id`` at epoch 1, and the work order that started it."""
        job_id, dispatch = self.assigned_job(worker_id)
        order = work_order(dispatch, worker_id, 1)
        assert self.start(job_id, epoch=1, worker_id=worker_id, order=order) is StartKind.RUN
        return job_id, order


@pytest.fixture
def db(redis_client: Redis) -> Iterator[JobsDb]:
    """The scratch database, flushed, with a job store on it and its announcements read."""
    events = JobEvents(redis_client)
    yield JobsDb(redis_client, events)
    events.close()


# --- create ----------------------------------------------------------------------------


def test_create_records_a_pending_job(db: JobsDb) -> None:
    job_id = uuid.uuid4().hex
    before = now_ms()

    assert db.store.create(job_id, SPEC, deadline_ms=before + 30_000) is True

    raw = db.record(job_id)
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
    job = db.store.get(job_id)
    assert job is not None
    assert (job.status, job.payload, job.requirements) == (
        JobStatus.PENDING,
        SPEC.payload,
        SPEC.requirements,
    )
    assert db.redis.ttl(KEY_JOB + job_id) == -1
    assert db.open_jobs() == {job_id: created}
    assert db.counts() == {"PENDING": "1"}
    db.expect_chain(job_id, {})
    assert not db.redis.keys(KEY_WORKER_JOBS + "*")
    # The job's event log starts with its PENDING status, at the creation time; like the
    # record it lives until the job is final. A job without an owner has no owner index.
    assert db.log(job_id) == [("status", created, PENDING_EVENT)]
    assert db.redis.ttl(KEY_JOB_LOG + job_id) == -1
    assert db.keys() == {KEY_JOB + job_id, KEY_JOBS_OPEN, KEY_JOBS_COUNT, KEY_JOB_LOG + job_id}
    assert db.events.of(job_id) == [{"job_id": job_id, "status": "PENDING", "epoch": 0}]


def test_create_drops_the_submit_intent(db: JobsDb) -> None:
    job_id, other = uuid.uuid4().hex, uuid.uuid4().hex
    before = now_ms()
    db.store.record_intents({job_id: {"task_type": "compute"}, other: {"task_type": "generic"}})
    # One hash holds every intent: job id -> when and the submit call.
    assert db.keys() == {KEY_INTENTS}
    intents = db.intents()
    assert set(intents) == {job_id, other}
    assert before <= intents[other]["ms"] == intents[job_id]["ms"] <= now_ms()
    assert intents[other]["call"] == {"task_type": "generic"}

    assert db.store.create(job_id, SPEC, deadline_ms=now_ms() + 30_000)

    assert db.redis.hexists(KEY_INTENTS, job_id) is False
    assert db.intents() == {other: intents[other]}


def test_duplicate_create_returns_false_and_changes_nothing_but_the_intent(db: JobsDb) -> None:
    job_id = db.new_job()
    other_spec = JobSpec(task_type="generic", payload={"echo": "x"}, priority=Priority.LOW)

    # The intent is answered (dropped), and nothing else moves.
    with db.unchanged(job_id):
        # The submit is re-published (an intent from the health check) after the job exists.
        db.store.record_intents({job_id: {"task_type": "generic"}})
        assert db.store.create(job_id, other_spec, deadline_ms=now_ms() + 1) is False

    assert db.redis.hexists(KEY_INTENTS, job_id) is False
    assert db.redis.exists(KEY_INTENTS) == 0
    assert db.record(job_id)["task_type"] == "compute"
    assert db.counts() == {"PENDING": "1"}
    assert db.statuses(job_id) == [PENDING_EVENT]


# --- assign ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("assigned_to", "worker", "epoch"),
    [(None, W1, 1), (W1, W2, 2)],
    ids=["pending-job", "job-assigned-to-another-worker"],
)
def test_assign_ok_moves_the_job_to_the_worker(
    assigned_to: str | None, worker: str, epoch: int, db: JobsDb
) -> None:
    other = assigned_to or W2
    links: dict[str, Envelope] = {}
    log_before = [PENDING_EVENT]
    if assigned_to is None:
        job_id = db.new_job()
    else:
        job_id, first = db.assigned_job(assigned_to)
        links["link:000001:a"] = first
        log_before.append(assigned_event(1, assigned_to))
    db.events.of(job_id)
    dispatch = dispatch_order(job_id)
    before = now_ms()

    outcome = db.assign(job_id, expected_epoch=epoch - 1, worker_id=worker, dispatch=dispatch)

    assert outcome == AssignOutcome(AssignKind.OK, epoch=epoch)
    raw = db.record(job_id)
    updated = int(raw["updated_ms"])
    assert before <= updated <= now_ms()
    assert (raw["status"], raw["epoch"], raw["attempts"], raw["assignee"]) == (
        "ASSIGNED",
        str(epoch),
        str(epoch),
        worker,
    )
    assert raw["dispatch_msg"] == dispatch.id
    assert "runs" not in raw and "result" not in raw
    job = db.store.get(job_id)  # the link:* fields are not part of the record
    assert job is not None
    assert (job.status, job.epoch, job.assignee) == (JobStatus.ASSIGNED, epoch, worker)
    assert db.worker_jobs(worker) == {job_id}
    assert db.worker_jobs(other) == set()
    assert db.open_jobs() == {job_id: updated}
    assert db.counts() == {"PENDING": "1"}  # only PENDING and final statuses are counted
    db.expect_chain(job_id, {**links, f"link:{epoch:06d}:a": dispatch})
    assert db.statuses(job_id) == [*log_before, assigned_event(epoch, worker)]
    assert db.log(job_id)[-1][:2] == ("status", updated)
    assert db.events.of(job_id) == [
        {"job_id": job_id, "status": "ASSIGNED", "epoch": epoch, "assignee": worker}
    ]


def test_assign_redo_when_the_same_dispatch_already_assigned_it(db: JobsDb) -> None:
    job_id, dispatch = db.assigned_job(W1)

    # The same dispatch message, redelivered: it recorded the assignment but may not
    # have sent the work order. Whoever it names now, the answer is the first choice.
    with db.unchanged(job_id):
        outcome = db.assign(job_id, expected_epoch=0, worker_id=W2, dispatch=dispatch)

    assert outcome == AssignOutcome(AssignKind.REDO, epoch=1, assignee=W1)
    assert db.worker_jobs(W1) == {job_id}
    assert db.worker_jobs(W2) == set()
    db.expect_chain(job_id, {"link:000001:a": dispatch})


def test_assign_stale_when_another_dispatch_moved_the_job(db: JobsDb) -> None:
    job_id, _ = db.assigned_job(W1)

    with db.unchanged(job_id):
        outcome = db.assign(job_id, expected_epoch=0, worker_id=W2)

    assert outcome == AssignOutcome(AssignKind.STALE, epoch=1)
    raw = db.record(job_id)
    assert (raw["status"], raw["epoch"], raw["assignee"]) == ("ASSIGNED", "1", W1)


def test_assign_stale_when_the_same_dispatch_comes_back_after_the_job_started(
    db: JobsDb,
) -> None:
    job_id, dispatch = db.assigned_job(W1)
    order = work_order(dispatch, W1, 1)
    assert db.start(job_id, epoch=1, worker_id=W1, order=order) is StartKind.RUN

    # A redo only re-sends an order nobody started yet.
    with db.unchanged(job_id):
        outcome = db.assign(job_id, expected_epoch=0, worker_id=W1, dispatch=dispatch)

    assert outcome == AssignOutcome(AssignKind.STALE, epoch=1)
    assert db.record(job_id)["status"] == "IN_PROGRESS"


def test_assign_exhausted_when_every_attempt_is_used(db: JobsDb) -> None:
    job_id = db.new_job()
    for epoch, worker in enumerate((W1, W2)):
        outcome = db.assign(job_id, expected_epoch=epoch, worker_id=worker, max_attempts=2)
        assert outcome.kind is AssignKind.OK

    with db.unchanged(job_id):
        outcome = db.assign(job_id, expected_epoch=2, worker_id=W1, max_attempts=2)

    assert outcome == AssignOutcome(AssignKind.EXHAUSTED, epoch=2)
    raw = db.record(job_id)
    assert (raw["status"], raw["epoch"], raw["attempts"], raw["assignee"]) == (
        "ASSIGNED",
        "2",
        "2",
        W2,
    )
    assert db.worker_jobs(W2) == {job_id}
    assert job_id in db.open_jobs()
    assert sorted(db.chain(job_id)) == ["link:000001:a", "link:000002:a"]


@pytest.mark.parametrize("copy", [False, True], ids=["new-dispatch", "copy-of-the-dispatch"])
@pytest.mark.parametrize("final", FINAL_STATUSES)
def test_assign_final_refuses_a_finished_job(final: JobStatus, copy: bool, db: JobsDb) -> None:
    job_id, dispatch = db.assigned_job(W1)
    assert db.store.finish(job_id, epoch=1, status=final).kind is FinishKind.RECORDED

    with db.unchanged(job_id):
        if copy:
            # A replay: a copy of the dispatch that assigned the job, for its old epoch.
            outcome = db.assign(job_id, expected_epoch=0, worker_id=W1, dispatch=dispatch)
        else:
            outcome = db.assign(job_id, expected_epoch=1, worker_id=W2)

    assert outcome == AssignOutcome(AssignKind.FINAL, status=final.value)
    assert db.worker_jobs(W2) == set()
    assert db.record(job_id)["status"] == final.value


# --- start -----------------------------------------------------------------------------


def test_start_run_moves_the_job_in_progress(db: JobsDb) -> None:
    job_id, dispatch = db.assigned_job(W1)
    db.events.of(job_id)
    order = work_order(dispatch, W1, 1)
    before = now_ms()

    assert db.start(job_id, epoch=1, worker_id=W1, order=order) is StartKind.RUN

    raw = db.record(job_id)
    updated = int(raw["updated_ms"])
    assert before <= updated <= now_ms()
    assert (raw["status"], raw["epoch"], raw["assignee"], raw["attempts"]) == (
        "IN_PROGRESS",
        "1",
        W1,
        "1",
    )
    assert (raw["exec_msg"], raw["runs"], raw["kind"]) == (order.id, "1", "handler")
    assert "result" not in raw
    assert db.worker_jobs(W1) == {job_id}
    assert job_id in db.open_jobs()
    assert db.counts() == {"PENDING": "1"}  # only PENDING and final statuses are counted
    assert db.stats() == {"handler_executions": "1"}
    db.expect_chain(job_id, {"link:000001:a": dispatch, "link:000001:b": order})
    assert db.statuses(job_id) == [PENDING_EVENT, assigned_event(1, W1), started_event(1, W1)]
    assert db.log(job_id)[-1][:2] == ("status", updated)
    assert db.events.of(job_id) == [
        {"job_id": job_id, "status": "IN_PROGRESS", "epoch": 1, "assignee": W1}
    ]


def test_start_rerun_counts_a_redelivery_and_moves_nothing_else(db: JobsDb) -> None:
    job_id, order = db.started_job(W1)
    db.events.of(job_id)
    before = db.record(job_id)
    chain_before = db.chain(job_id)
    log_before = db.log(job_id)

    # Celery redelivers the same work order after the worker process died mid-way.
    assert db.start(job_id, epoch=1, worker_id=W1, order=order) is StartKind.RERUN

    assert db.record(job_id) == {**before, "runs": "2"}
    assert db.stats() == {"handler_executions": "2", "redeliveries": "1"}
    assert db.counts() == {"PENDING": "1"}
    assert db.chain(job_id) == chain_before
    assert sorted(chain_before) == ["link:000001:a", "link:000001:b"]
    assert db.worker_jobs(W1) == {job_id}
    # The status did not change, so the log did not either.
    assert db.log(job_id) == log_before
    assert len(log_before) == 3
    assert db.events.of(job_id) == []


@pytest.mark.parametrize(
    ("epoch", "worker_id"),
    [(0, W1), (2, W1), (1, W2)],
    ids=["older-epoch", "newer-epoch", "other-worker"],
)
def test_start_stale_for_another_epoch_or_worker(epoch: int, worker_id: str, db: JobsDb) -> None:
    job_id, dispatch = db.assigned_job(W1)

    with db.unchanged(job_id):
        order = work_order(dispatch, worker_id, epoch)
        assert db.start(job_id, epoch=epoch, worker_id=worker_id, order=order) is StartKind.STALE

    assert "runs" not in db.record(job_id)


def test_start_stale_for_another_order_of_a_running_job(db: JobsDb) -> None:
    job_id, _ = db.started_job(W1)

    # Same epoch and worker, but not the message that started the job: not a redelivery.
    with db.unchanged(job_id):
        other = work_order(dispatch_order(job_id), W1, 1)
        assert db.start(job_id, epoch=1, worker_id=W1, order=other) is StartKind.STALE

    assert db.record(job_id)["runs"] == "1"


@pytest.mark.parametrize("copy", ["the-order-that-ran-it", "an-order-of-an-older-epoch"], ids=str)
@pytest.mark.parametrize("final", FINAL_STATUSES)
def test_start_final_refuses_a_copy_of_an_order_of_a_finished_job(
    final: JobStatus, copy: str, db: JobsDb
) -> None:
    # w1 started the job at epoch 1 and died; w2 ran it at epoch 2 and finished it.
    job_id, first = db.started_job(W1)
    dispatch = dispatch_order(job_id)
    outcome = db.assign(job_id, expected_epoch=1, worker_id=W2, dispatch=dispatch)
    assert outcome.kind is AssignKind.OK
    second = work_order(dispatch, W2, 2)
    assert db.start(job_id, epoch=2, worker_id=W2, order=second) is StartKind.RUN
    assert db.store.finish(job_id, epoch=2, status=final).kind is FinishKind.RECORDED
    epoch, worker_id, order = (2, W2, second) if copy == "the-order-that-ran-it" else (1, W1, first)

    # A replay: the job is final, whatever epoch the copy carries (checked first).
    with db.unchanged(job_id):
        assert db.start(job_id, epoch=epoch, worker_id=worker_id, order=order) is StartKind.FINAL

    raw = db.record(job_id)
    assert (raw["status"], raw["epoch"], raw["runs"]) == (final.value, "2", "2")
    assert db.stats() == {"handler_executions": "2"}


def test_start_exhausted_for_a_new_epoch_of_a_poison_job(db: JobsDb) -> None:
    # The job ran once on w1 (whose process died); the distributor re-assigned it to w2.
    job_id, _ = db.started_job(W1)
    dispatch = dispatch_order(job_id)
    outcome = db.assign(job_id, expected_epoch=1, worker_id=W2, dispatch=dispatch)
    assert outcome.kind is AssignKind.OK
    db.events.of(job_id)
    before = db.record(job_id)
    stats_before = db.stats()
    chain_before = db.chain(job_id)
    log_before = db.log(job_id)
    order = work_order(dispatch, W2, 2)

    kind = db.start(job_id, epoch=2, worker_id=W2, order=order, max_runs=1)

    assert kind is StartKind.EXHAUSTED
    # Only the run counter moved: the job stays ASSIGNED for the worker to fail it.
    assert db.record(job_id) == {**before, "runs": "2"}
    assert before["status"] == "ASSIGNED"
    assert db.stats() == stats_before == {"handler_executions": "1"}
    assert db.counts() == {"PENDING": "1"}
    assert db.chain(job_id) == chain_before
    assert sorted(chain_before) == ["link:000001:a", "link:000001:b", "link:000002:a"]
    assert db.worker_jobs(W2) == {job_id}
    assert db.log(job_id) == log_before
    assert db.statuses(job_id)[-1] == assigned_event(2, W2)
    assert db.events.of(job_id) == []


def test_start_exhausted_for_a_redelivery_past_the_bound(db: JobsDb) -> None:
    job_id, order = db.started_job(W1)
    db.events.of(job_id)
    before = db.record(job_id)
    log_before = db.log(job_id)

    kind = db.start(job_id, epoch=1, worker_id=W1, order=order, max_runs=1)

    assert kind is StartKind.EXHAUSTED
    assert db.record(job_id) == {**before, "runs": "2"}
    assert db.stats() == {"handler_executions": "1"}
    assert db.log(job_id) == log_before
    assert db.events.of(job_id) == []


# --- finish ----------------------------------------------------------------------------


def test_finish_recorded_closes_the_job_and_chains_its_cause(db: JobsDb) -> None:
    job_id, order = db.started_job(W1)
    db.events.of(job_id)
    report = work_report(order)
    chain_before = db.chain(job_id)
    stats_before = db.stats()
    before = now_ms()

    outcome = db.store.finish(
        job_id,
        epoch=1,
        status=JobStatus.COMPLETED,
        result={"sum": 3},
        cause=report,
    )

    assert outcome == FinishOutcome(FinishKind.RECORDED, status="COMPLETED")
    raw = db.record(job_id)
    finished = int(raw["finished_ms"])
    assert before <= finished <= now_ms()
    assert raw["updated_ms"] == raw["finished_ms"]
    assert (raw["status"], raw["epoch"], raw["assignee"]) == ("COMPLETED", "1", W1)
    assert (raw["result"], raw["error"]) == ('{"sum":3}', "null")
    job = db.store.get(job_id)
    assert job is not None
    assert (job.status, job.result, job.error) == (JobStatus.COMPLETED, {"sum": 3}, None)
    assert db.worker_jobs(W1) == set()
    assert db.open_jobs() == {}
    assert db.counts() == {"PENDING": "1", "COMPLETED": "1"}
    assert db.stats() == stats_before
    assert db.chain(job_id) == {**chain_before, "link:000001:c": chain_link(report)}
    assert [link["id"] for link in db.store.chain(job_id)] == [
        json.loads(chain_before["link:000001:a"])["id"],
        order.id,
        report.id,
    ]
    # The log ends with the final status and the result, at the finish time.
    assert db.statuses(job_id) == [
        PENDING_EVENT,
        assigned_event(1, W1),
        started_event(1, W1),
        final_event(JobStatus.COMPLETED, 1, result={"sum": 3}),
    ]
    assert db.log(job_id)[-1][:2] == ("status", finished)
    # The record (its chain in it) and the log expire; nothing else was written: no
    # marker, no list, no checkpoint key (a handler's job has none to expire).
    assert 0 < db.redis.ttl(KEY_JOB + job_id) <= RESULT_TTL_S
    assert 0 < db.redis.ttl(KEY_JOB_LOG + job_id) <= RESULT_TTL_S
    assert db.expiring_keys() == {KEY_JOB + job_id, KEY_JOB_LOG + job_id}
    assert db.keys() == {KEY_JOB + job_id, KEY_JOB_LOG + job_id, KEY_JOBS_COUNT, KEY_STATS_JOBS}
    assert announced(db.events.of(job_id)) == [("COMPLETED", 1, W1, "")]


@pytest.mark.parametrize("with_event", [False, True], ids=["no-event", "signed-event"])
def test_finish_recorded_without_a_cause_for_a_job_nobody_took(
    with_event: bool, db: JobsDb
) -> None:
    # The coordinator abandons a PENDING job whose deadline passed: epoch 0, no assignee.
    job_id = db.new_job()
    db.events.of(job_id)
    error = {"type": "DeadlineExceeded", "message": "no eligible worker"}
    # With an EVENT but no cause, the record gets the event's link (step d) alone.
    event = (
        bare_envelope(SIGNER, MessageType.EVENT, sender=COORDINATOR, recipient=COORDINATOR)
        if with_event
        else None
    )

    outcome = db.store.finish(job_id, epoch=0, status=JobStatus.ABANDONED, error=error, event=event)

    assert outcome == FinishOutcome(FinishKind.RECORDED, status="ABANDONED")
    raw = db.record(job_id)
    assert (raw["status"], raw["epoch"], raw["assignee"]) == ("ABANDONED", "0", "")
    assert (raw["result"], json.loads(raw["error"])) == ("null", error)
    assert db.open_jobs() == {}
    assert not db.redis.keys(KEY_WORKER_JOBS + "*")
    assert db.counts() == {"PENDING": "1", "ABANDONED": "1"}
    db.expect_chain(job_id, {"link:000000:d": event} if event is not None else {})
    assert db.statuses(job_id) == [
        PENDING_EVENT,
        final_event(JobStatus.ABANDONED, 0, error=error),
    ]
    assert 0 < db.redis.ttl(KEY_JOB + job_id) <= RESULT_TTL_S
    assert db.expiring_keys() == {KEY_JOB + job_id, KEY_JOB_LOG + job_id}
    assert db.keys() == {KEY_JOB + job_id, KEY_JOB_LOG + job_id, KEY_JOBS_COUNT}
    (announcement,) = db.events.of(job_id)
    assert announced([announcement])[0][:3] == ("ABANDONED", 0, "")
    if event is None:
        assert announcement["event"] == ""
    else:
        assert json.loads(announcement["event"]) == event.to_wire()


def test_finish_recorded_with_the_signed_event_chains_and_announces_it(db: JobsDb) -> None:
    job_id, order = db.started_job(W1)
    db.events.of(job_id)
    report = work_report(order)
    event = SIGNER.reply(report, MessageType.EVENT, {"job_id": job_id}, sender=DISTRIBUTOR)
    chain_before = db.chain(job_id)

    outcome = db.store.finish(
        job_id,
        epoch=1,
        status=JobStatus.FAILED,
        error={"type": "E", "message": "m"},
        cause=report,
        event=event,
    )

    assert outcome == FinishOutcome(FinishKind.RECORDED, status="FAILED")
    assert db.record(job_id)["status"] == "FAILED"
    assert db.chain(job_id) == {
        **chain_before,
        "link:000001:c": chain_link(report),
        "link:000001:d": chain_link(event),
    }
    assert [link["id"] for link in db.store.chain(job_id)][-3:] == [order.id, report.id, event.id]
    assert db.counts() == {"PENDING": "1", "FAILED": "1"}
    # The signed EVENT rides in the announcement, not in the log.
    assert db.statuses(job_id)[-1] == final_event(
        JobStatus.FAILED, 1, error={"type": "E", "message": "m"}
    )
    assert db.expiring_keys() == {KEY_JOB + job_id, KEY_JOB_LOG + job_id}
    (announcement,) = db.events.of(job_id)
    assert announced([announcement])[0][:3] == ("FAILED", 1, W1)
    assert json.loads(announcement["event"]) == event.to_wire()


@pytest.mark.parametrize("second", ["copy-of-the-report", "late-report"], ids=str)
@pytest.mark.parametrize(
    ("first", "result", "error"),
    [
        (JobStatus.COMPLETED, {"sum": 3}, None),
        (JobStatus.FAILED, None, {"type": "ValueError", "message": "bad values"}),
    ],
    ids=["completed", "failed"],
)
def test_finish_already_returns_the_first_result_and_changes_nothing(
    first: JobStatus, result: Any, error: dict[str, str] | None, second: str, db: JobsDb
) -> None:
    job_id, order = db.started_job(W1)
    report = work_report(order)
    event = SIGNER.reply(report, MessageType.EVENT, {"job_id": job_id}, sender=DISTRIBUTOR)
    recorded = db.store.finish(
        job_id, epoch=1, status=first, result=result, error=error, cause=report, event=event
    )
    assert recorded.kind is FinishKind.RECORDED

    # A second completion of the same epoch: a replayed copy of the report, or a late
    # duplicate; either way its links and its EVENT are not recorded.
    late = report if second == "copy-of-the-report" else work_report(order)
    late_event = SIGNER.reply(late, MessageType.EVENT, {"job_id": job_id}, sender=DISTRIBUTOR)
    with db.unchanged(job_id):
        outcome = db.store.finish(
            job_id,
            epoch=1,
            status=JobStatus.COMPLETED,
            result="late",
            cause=late,
            event=late_event,
        )

    assert outcome == FinishOutcome(
        FinishKind.ALREADY, status=first.value, result=result, error=error
    )
    job = db.store.get(job_id)
    assert job is not None
    assert (job.status, job.result, job.error) == (first, result, error)
    assert db.chain(job_id)["link:000001:d"] == chain_link(event)
    assert db.counts() == {"PENDING": "1", first.value: "1"}
    # One final status event: the first result's (the block above saw the log unchanged).
    assert db.statuses(job_id)[-1] == final_event(first, 1, result=result, error=error)
    assert [e["status"] for e in db.statuses(job_id)].count(first.value) == 1


def test_finish_stale_for_an_older_epoch(db: JobsDb) -> None:
    # w1 started the job, was declared dead, and the job went to w2 at epoch 2.
    job_id, order = db.started_job(W1)
    assert db.assign(job_id, expected_epoch=1, worker_id=W2).kind is AssignKind.OK

    with db.unchanged(job_id):
        report = work_report(order)
        event = SIGNER.reply(report, MessageType.EVENT, {"job_id": job_id}, sender=DISTRIBUTOR)
        outcome = db.store.finish(
            job_id,
            epoch=1,
            status=JobStatus.COMPLETED,
            result=3,
            cause=report,
            event=event,
        )

    assert outcome == FinishOutcome(FinishKind.STALE, status="ASSIGNED")
    raw = db.record(job_id)
    assert (raw["status"], raw["epoch"], raw["assignee"]) == ("ASSIGNED", "2", W2)
    assert "result" not in raw
    assert "link:000001:c" not in raw and "link:000001:d" not in raw
    assert db.worker_jobs(W2) == {job_id}
    assert db.statuses(job_id)[-1] == assigned_event(2, W2)
    assert db.redis.ttl(KEY_JOB_LOG + job_id) == -1


def test_finish_refuses_a_status_that_is_not_final(db: JobsDb) -> None:
    job_id, _ = db.assigned_job(W1)

    with db.unchanged(job_id), pytest.raises(ValueError, match="not a final status"):
        db.store.finish(job_id, epoch=1, status=JobStatus.IN_PROGRESS)


# --- a job that does not exist -----------------------------------------------------------


def _assign(db: JobsDb, job_id: str, order: Envelope) -> object:
    return db.assign(job_id, expected_epoch=0)


def _start(db: JobsDb, job_id: str, order: Envelope) -> object:
    # The script answers 'missing'; for the worker that is one more order to drop.
    return db.start(job_id, epoch=1, worker_id=W1, order=order)


def _finish(db: JobsDb, job_id: str, order: Envelope) -> object:
    report = work_report(order)
    return db.store.finish(
        job_id,
        epoch=1,
        status=JobStatus.COMPLETED,
        result=3,
        cause=report,
        event=SIGNER.reply(report, MessageType.EVENT, {"job_id": job_id}, sender=DISTRIBUTOR),
    )


@pytest.mark.parametrize(
    ("script", "answer"),
    [
        (_assign, AssignOutcome(AssignKind.MISSING)),
        (_start, StartKind.STALE),
        (_finish, FinishOutcome(FinishKind.MISSING)),
    ],
    ids=["assign", "start", "finish"],
)
def test_a_missing_job_is_answered_and_nothing_is_created(
    script: Callable[[JobsDb, str, Envelope], object], answer: object, db: JobsDb
) -> None:
    job_id = uuid.uuid4().hex
    order = work_order(dispatch_order(job_id), W1, 1)

    answered = script(db, job_id, order)

    assert type(answered) is type(answer) and answered == answer

    assert db.dump() == {}
    assert db.events.of(job_id) == []


# --- the causal chain ------------------------------------------------------------------


def test_the_chain_reads_in_order_across_epochs_and_steps(db: JobsDb) -> None:
    # Ten epochs (link:000009:* sorts before link:000010:*), each dispatched and started,
    # the last one finished with its cause and signed EVENT.
    epochs = 10
    job_id = db.new_job()
    expected: list[Envelope] = []
    for epoch in range(1, epochs + 1):
        worker = (W1, W2)[epoch % 2]
        dispatch = dispatch_order(job_id)
        outcome = db.assign(
            job_id,
            expected_epoch=epoch - 1,
            worker_id=worker,
            dispatch=dispatch,
            max_attempts=epochs,
        )
        assert outcome == AssignOutcome(AssignKind.OK, epoch=epoch)
        order = work_order(dispatch, worker, epoch)
        kind = db.start(job_id, epoch=epoch, worker_id=worker, order=order, max_runs=epochs)
        assert kind is StartKind.RUN
        expected += [dispatch, order]
    report = work_report(expected[-1])
    event = SIGNER.reply(report, MessageType.EVENT, {"job_id": job_id}, sender=DISTRIBUTOR)
    outcome_final = db.store.finish(
        job_id, epoch=epochs, status=JobStatus.COMPLETED, result=1, cause=report, event=event
    )
    assert outcome_final.kind is FinishKind.RECORDED
    expected += [report, event]

    assert [link["id"] for link in db.store.chain(job_id)] == [e.id for e in expected]
    assert db.store.chain(job_id) == [json.loads(chain_link(e)) for e in expected]
    assert len(db.chain(job_id)) == 2 * epochs + 2
    assert {"link:000009:b", "link:000010:a", "link:000010:d"} <= set(db.chain(job_id))
    job = db.store.get(job_id)  # the record reads without its chain
    assert job is not None
    assert (job.status, job.epoch, job.attempts, job.result) == (
        JobStatus.COMPLETED,
        epochs,
        epochs,
        1,
    )
    assert db.stats() == {"handler_executions": str(epochs)}
    assert db.counts() == {"PENDING": "1", "COMPLETED": "1"}
    # The log holds every transition of every epoch, in order.
    expected_log = [PENDING_EVENT]
    for epoch in range(1, epochs + 1):
        worker = (W1, W2)[epoch % 2]
        expected_log += [assigned_event(epoch, worker), started_event(epoch, worker)]
    expected_log.append(final_event(JobStatus.COMPLETED, epochs, result=1))
    assert db.statuses(job_id) == expected_log
    stamps = [ms for _, ms, _ in db.log(job_id)]
    assert stamps == sorted(stamps)
