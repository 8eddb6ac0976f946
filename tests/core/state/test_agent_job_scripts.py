"""Agent jobs on the job-record scripts, against a real redis-server.

Covers what agents added to the exactly-once core: ``park`` (IN_PROGRESS ->
INPUT_REQUIRED, with an input deadline in ``jobs:waiting``), ``resume`` (INPUT_REQUIRED ->
PENDING), ``cancel`` (any unfinished status -> CANCELED), ``finish`` with ``only_from``,
the job's event log (``joblog_append``'s fence, :class:`JobLog` cursors and ``follow``),
the owner index, and the checkpoint fence (``RedisSaver`` writes only while the job is
IN_PROGRESS at the writer's epoch). As in ``test_job_scripts``, a refusal must leave the
database exactly as it was: every test of one compares the whole keyspace.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypedDict

import pytest
import redis.asyncio
from conftest import redis_url
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import Checkpoint, empty_checkpoint
from langgraph.graph import END, START, StateGraph
from redis import Redis
from test_job_scripts import (
    MAX_ATTEMPTS,
    PENDING_EVENT,
    RESULT_TTL_S,
    SIGNER,
    W1,
    W2,
    JobEvents,
    JobsDb,
    announced,
    assigned_event,
    dispatch_order,
    dump_keyspace,
    final_event,
    started_event,
    work_order,
    work_report,
)

from project.core.a2a.envelope import Envelope, MessageType, now_ms
from project.core.checkpoint import (
    FENCE,
    CheckpointError,
    FencedWriteError,
    RedisSaver,
    thread_keys,
)
from project.core.constants import (
    CHANNEL_JOBS,
    DISTRIBUTOR,
    KEY_JOB,
    KEY_JOB_LOG,
    KEY_JOBS_OPEN,
    KEY_JOBS_OWNER,
    KEY_JOBS_WAITING,
    KEY_WORKER_JOBS,
)
from project.core.models import JobSpec, JobStatus
from project.core.state import jobs as jobs_module
from project.core.state.joblog import JobLog, JobLogEvent
from project.core.state.jobs import (
    OWNER_INDEX_CAP,
    AssignKind,
    AssignOutcome,
    FinishKind,
    FinishOutcome,
    StartKind,
    chain_link,
)
from project.core.state.lua import load_script

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

INPUT_TIMEOUT_S = 30.0
AGENT_SPEC = JobSpec(
    task_type="approval", payload={"text": "the plan"}, input_timeout_s=INPUT_TIMEOUT_S
)
INTERRUPTS: list[dict[str, Any]] = [{"id": "i1", "value": {"question": "approve the plan?"}}]
CANCELED = {"type": "JobCanceledError", "message": "the job was canceled"}
LOG_CAP = 1_000


# --- helpers ---------------------------------------------------------------------------


class AgentDb(JobsDb):
    """:class:`JobsDb` with agent jobs: started as ``agent``, parked, resumed, canceled."""

    def __init__(self, redis: Redis, raw: Redis, events: JobEvents) -> None:
        super().__init__(redis, events)
        self.raw = raw
        self.joblog = JobLog(redis, cap=LOG_CAP)

    def snapshot(self) -> dict[Any, tuple[str, object, bool]]:
        """The whole keyspace, binary checkpoint data included."""
        return dump_keyspace(self.raw)

    def create(self, spec: JobSpec = AGENT_SPEC) -> str:
        job_id = uuid.uuid4().hex
        assert self.store.create(job_id, spec, deadline_ms=now_ms() + 30_000)
        return job_id

    def start_as(
        self, job_id: str, *, epoch: int, worker_id: str, order: Envelope, kind: str = "agent"
    ) -> StartKind:
        return self.store.start(
            job_id,
            epoch=epoch,
            worker_id=worker_id,
            request=order,
            max_runs=MAX_ATTEMPTS,
            kind=kind,
        )

    def dispatch(
        self, job_id: str, *, expected_epoch: int, worker_id: str = W1, kind: str = "agent"
    ) -> Envelope:
        """Assign the job at the next epoch and start it there; the work order that did."""
        dispatch = dispatch_order(job_id)
        outcome = self.assign(
            job_id, expected_epoch=expected_epoch, worker_id=worker_id, dispatch=dispatch
        )
        assert outcome == AssignOutcome(AssignKind.OK, epoch=expected_epoch + 1)
        order = work_order(dispatch, worker_id, expected_epoch + 1)
        started = self.start_as(
            job_id, epoch=expected_epoch + 1, worker_id=worker_id, order=order, kind=kind
        )
        assert started is StartKind.RUN
        return order

    def running(
        self, spec: JobSpec = AGENT_SPEC, worker_id: str = W1, kind: str = "agent"
    ) -> tuple[str, Envelope]:
        """A job IN_PROGRESS on ``worker_id`` at epoch 1, and the work order that started it."""
        job_id = self.create(spec)
        return job_id, self.dispatch(job_id, expected_epoch=0, worker_id=worker_id, kind=kind)

    def parked(self, spec: JobSpec = AGENT_SPEC, worker_id: str = W1) -> tuple[str, Envelope]:
        """An agent job INPUT_REQUIRED at epoch 1 (parked by ``worker_id``'s report)."""
        job_id, order = self.running(spec, worker_id)
        assert self.store.park(job_id, epoch=1, interrupts=INTERRUPTS, cause=work_report(order))
        return job_id, order

    def resumed(self) -> str:
        """An agent job parked at epoch 1 and resumed: PENDING at epoch 2 (the resume opens
        a new epoch, so anything built for the parked one is stale)."""
        job_id, _ = self.parked()
        assert self.store.resume(job_id, {"i1": "yes"}) == ("resumed", "2")
        return job_id

    def waiting(self) -> dict[str, int]:
        pairs: list[tuple[str, float]] = self.redis.zrange(  # type: ignore[assignment]
            KEY_JOBS_WAITING, 0, -1, withscores=True
        )
        return {job_id: int(score) for job_id, score in pairs}

    def ttl(self, key: str) -> int:
        return int(self.redis.ttl(key))  # type: ignore[arg-type]

    def clock_ms(self) -> int:
        """Redis's clock (``TIME``), in ms: where input deadlines are measured."""
        seconds, micros = self.redis.time()  # type: ignore[misc]
        return int(seconds) * 1000 + int(micros) // 1000

    def input_deadline(self, job_id: str, timeout_s: float, low_ms: int, high_ms: int) -> int:
        """The job's input deadline, checked: ``timeout_s`` after the park, which happened
        between ``low_ms`` and ``high_ms`` (read with :meth:`clock_ms`)."""
        deadline = int(self.record(job_id)["input_deadline_ms"])
        timeout_ms = int(timeout_s * 1000)
        assert low_ms + timeout_ms <= deadline <= high_ms + timeout_ms
        return deadline

    def seed_checkpoints(self, job_id: str) -> None:
        """Write a checkpoint and a pending write of the job's thread (unfenced): all six
        checkpoint keys exist, without a TTL."""
        saver = RedisSaver(self.redis)
        stored = put_checkpoint(saver, job_id, 1)
        saver.put_writes(stored, [("count", 2)], "task-1")
        assert all(self.redis.exists(key) for key in thread_keys(job_id))
        assert all(self.ttl(key) == -1 for key in thread_keys(job_id))

    def checkpoint_ttls(self, job_id: str) -> list[int]:
        return [self.ttl(key) for key in thread_keys(job_id)]


def checkpoint(n: int) -> Checkpoint:
    """A checkpoint whose one channel ``count`` holds ``n`` (at version ``n``)."""
    cp = empty_checkpoint()
    cp["channel_values"] = {"count": n}
    cp["channel_versions"] = {"count": f"{n:032d}.0"}
    return cp


def thread_config(
    job_id: str, fence: list[Any] | None = None, checkpoint_id: str | None = None
) -> RunnableConfig:
    configurable: dict[str, Any] = {"thread_id": job_id, "checkpoint_ns": ""}
    if checkpoint_id is not None:
        configurable["checkpoint_id"] = checkpoint_id
    if fence is not None:
        configurable[FENCE] = fence
    return {"configurable": configurable}


def put_checkpoint(
    saver: RedisSaver, job_id: str, n: int, fence: list[Any] | None = None
) -> RunnableConfig:
    cp = checkpoint(n)
    return saver.put(
        thread_config(job_id, fence), cp, {"step": n}, {"count": cp["channel_versions"]["count"]}
    )


def fence_of(job_id: str, epoch: int) -> list[Any]:
    """The ``job_fence`` value the agent runner puts in a run's config."""
    return [KEY_JOB + job_id, epoch]


def park_reply(db: AgentDb, job_id: str, epoch: int) -> list[str]:
    """``job_park`` called with its raw KEYS/ARGV, for the reply the store folds to a bool."""
    script = db.redis.register_script(load_script("job_park"))
    keys = [KEY_JOB + job_id, KEY_JOBS_OPEN, KEY_JOBS_WAITING, KEY_JOB_LOG + job_id]
    args = [job_id, epoch, json.dumps(INTERRUPTS), now_ms(), KEY_WORKER_JOBS, CHANNEL_JOBS, "", 10]
    return list(script(keys=keys, args=args))


def parked_event(epoch: int, interrupts: list[dict[str, Any]] = INTERRUPTS) -> dict[str, Any]:
    return {"status": "INPUT_REQUIRED", "epoch": epoch, "interrupts": interrupts}


def resumed_event(epoch: int) -> dict[str, Any]:
    return {"status": "PENDING", "epoch": epoch, "resumed": True}


@pytest.fixture
def db(redis_client: Redis) -> Iterator[AgentDb]:
    """The flushed scratch database (15) with a job store and a job log on it, its
    announcements read, and a client that does not decode (for binary checkpoint data)."""
    events = JobEvents(redis_client)
    raw = Redis.from_url(redis_url(15))
    yield AgentDb(redis_client, raw, events)
    raw.close()
    events.close()


# --- start as an agent -------------------------------------------------------------------


def test_start_records_the_kind_of_run(db: AgentDb) -> None:
    job_id, _ = db.running(kind="agent")
    handler_id, _ = db.running(kind="handler")

    assert db.record(job_id)["kind"] == "agent"
    assert db.record(handler_id)["kind"] == "handler"
    job = db.store.get(job_id)
    assert job is not None and job.kind == "agent"


# --- park ------------------------------------------------------------------------------


def test_park_moves_a_running_agent_to_input_required(db: AgentDb) -> None:
    job_id, order = db.running()
    db.events.of(job_id)
    report = work_report(order)
    chain_before = db.chain(job_id)
    before = now_ms()
    clock_before = db.clock_ms()

    assert db.store.park(job_id, epoch=1, interrupts=INTERRUPTS, cause=report) is True

    clock_after = db.clock_ms()
    raw = db.record(job_id)
    updated = int(raw["updated_ms"])
    assert before <= updated <= now_ms()
    # Same epoch and assignee; the interrupts are recorded and the report that parked it
    # is the epoch's response link.
    assert (raw["status"], raw["epoch"], raw["assignee"], raw["attempts"]) == (
        "INPUT_REQUIRED",
        "1",
        W1,
        "1",
    )
    assert json.loads(raw["interrupts"]) == INTERRUPTS
    deadline = db.input_deadline(job_id, INPUT_TIMEOUT_S, clock_before, clock_after)
    assert "result" not in raw and "resume" not in raw
    assert db.chain(job_id) == {**chain_before, "link:000001:c": chain_link(report)}
    job = db.store.get(job_id)
    assert job is not None
    assert (job.status, job.interrupts, job.input_deadline_ms) == (
        JobStatus.INPUT_REQUIRED,
        INTERRUPTS,
        deadline,
    )
    # The worker's slot is free, the job is not "stuck", and it waits until its deadline.
    assert db.worker_jobs(W1) == set()
    assert db.open_jobs() == {}
    assert db.waiting() == {job_id: deadline}
    assert db.counts() == {"PENDING": "1"}
    assert db.statuses(job_id) == [
        PENDING_EVENT,
        assigned_event(1, W1),
        started_event(1, W1),
        parked_event(1),
    ]
    assert db.log(job_id)[-1][:2] == ("status", updated)
    assert db.ttl(KEY_JOB + job_id) == db.ttl(KEY_JOB_LOG + job_id) == -1
    assert db.events.of(job_id) == [
        {"job_id": job_id, "status": "INPUT_REQUIRED", "epoch": 1, "assignee": W1}
    ]


def test_park_without_an_input_timeout_waits_without_a_deadline(db: AgentDb) -> None:
    job_id, _ = db.running(JobSpec(task_type="approval", payload={}))

    assert db.store.park(job_id, epoch=1, interrupts=INTERRUPTS) is True

    raw = db.record(job_id)
    assert raw["status"] == "INPUT_REQUIRED"
    assert "input_deadline_ms" not in raw
    assert "link:000001:c" not in raw  # no cause, no link
    assert db.redis.exists(KEY_JOBS_WAITING) == 0
    assert db.open_jobs() == {}
    assert db.worker_jobs(W1) == set()


@pytest.mark.parametrize("timeout_s", [0.25, 1.5, 3_600.0])
def test_the_input_deadline_orders_jobs_waiting(timeout_s: float, db: AgentDb) -> None:
    spec = JobSpec(task_type="approval", payload={}, input_timeout_s=timeout_s)
    job_id, _ = db.running(spec)
    later_id, _ = db.running(
        JobSpec(task_type="approval", payload={}, input_timeout_s=timeout_s + 10)
    )

    clock_before = db.clock_ms()
    assert db.store.park(job_id, epoch=1, interrupts=INTERRUPTS)
    assert db.store.park(later_id, epoch=1, interrupts=INTERRUPTS)
    clock_after = db.clock_ms()

    deadline = db.input_deadline(job_id, timeout_s, clock_before, clock_after)
    later = db.input_deadline(later_id, timeout_s + 10, clock_before, clock_after)
    assert db.waiting() == {job_id: deadline, later_id: later}
    # Due at its deadline, not a millisecond before; earliest deadline first.
    assert db.store.waiting_past(deadline - 1) == []
    assert db.store.waiting_past(deadline) == [job_id]
    assert db.store.waiting_past(later) == [job_id, later_id]
    assert db.store.waiting_past(later, limit=1) == [job_id]


def _older_epoch(db: AgentDb) -> tuple[str, int, str]:
    # w1 ran it at epoch 1 and was declared dead; w2 runs it at epoch 2. w1's report is late.
    job_id, _ = db.running(worker_id=W1)
    db.dispatch(job_id, expected_epoch=1, worker_id=W2)
    return job_id, 1, "IN_PROGRESS"


def _newer_epoch(db: AgentDb) -> tuple[str, int, str]:
    job_id, _ = db.running()
    return job_id, 2, "IN_PROGRESS"


def _not_started(db: AgentDb) -> tuple[str, int, str]:
    job_id, _ = db.assigned_job(W1)
    return job_id, 1, "ASSIGNED"


def _parked_already(db: AgentDb) -> tuple[str, int, str]:
    job_id, _ = db.parked()
    return job_id, 1, "INPUT_REQUIRED"


def _resumed(db: AgentDb) -> tuple[str, int, str]:
    # The run that parked it (epoch 1) writes late: the resume moved the job to epoch 2.
    return db.resumed(), 1, "PENDING"


def _completed(db: AgentDb) -> tuple[str, int, str]:
    job_id, _ = db.running()
    outcome = db.store.finish(job_id, epoch=1, status=JobStatus.COMPLETED, result=1)
    assert outcome.kind is FinishKind.RECORDED
    return job_id, 1, "COMPLETED"


def _canceled(db: AgentDb) -> tuple[str, int, str]:
    job_id, _ = db.running()
    assert db.store.cancel(job_id, CANCELED)[0] == "canceled"
    return job_id, 1, "CANCELED"


def _missing(db: AgentDb) -> tuple[str, int, str]:
    return uuid.uuid4().hex, 1, "MISSING"


NOT_RUNNING = pytest.mark.parametrize(
    "setup",
    [_older_epoch, _newer_epoch, _not_started, _parked_already, _resumed, _completed, _canceled],
    ids=["older-epoch", "newer-epoch", "not-started", "parked", "resumed", "completed", "canceled"],
)
"""A job that is not IN_PROGRESS at the writer's epoch: ``(job id, writer's epoch, status)``."""


@NOT_RUNNING
def test_park_refuses_a_job_not_running_at_the_epoch(
    setup: Callable[[AgentDb], tuple[str, int, str]], db: AgentDb
) -> None:
    job_id, epoch, status = setup(db)

    with db.unchanged(job_id):
        assert db.store.park(job_id, epoch=epoch, interrupts=INTERRUPTS) is False
    with db.unchanged(job_id):
        assert park_reply(db, job_id, epoch) == ["stale", status]

    assert db.record(job_id)["status"] == status


def test_park_of_a_missing_job_creates_nothing(db: AgentDb) -> None:
    job_id = uuid.uuid4().hex

    assert park_reply(db, job_id, 1) == ["missing"]
    assert db.store.park(job_id, epoch=1, interrupts=INTERRUPTS) is False

    assert db.dump() == {}
    assert db.events.of(job_id) == []


def test_assign_and_start_leave_a_parked_job_alone(db: AgentDb) -> None:
    job_id, order = db.parked()
    first_dispatch = json.loads(db.chain(job_id)["link:000001:a"])

    # Only resume moves a parked job on: a dispatch for its epoch is stale, and so is a
    # redelivery of the work order that ran it up to the interrupt.
    with db.unchanged(job_id):
        outcome = db.assign(job_id, expected_epoch=1, worker_id=W2)
        assert outcome == AssignOutcome(AssignKind.STALE, epoch=1)
    with db.unchanged(job_id):
        assert db.start_as(job_id, epoch=1, worker_id=W1, order=order) is StartKind.STALE

    raw = db.record(job_id)
    assert (raw["status"], raw["runs"], raw["dispatch_msg"]) == (
        "INPUT_REQUIRED",
        "1",
        first_dispatch["id"],
    )


# --- resume ----------------------------------------------------------------------------


def test_resume_moves_a_parked_agent_back_to_pending(db: AgentDb) -> None:
    job_id, _ = db.parked()
    db.events.of(job_id)
    message = {"role": "user", "parts": [{"text": "yes"}]}
    chain_before = db.chain(job_id)
    before = now_ms()

    assert db.store.resume(job_id, {"i1": "yes"}, a2a_message=message) == ("resumed", "2")

    raw = db.record(job_id)
    updated = int(raw["updated_ms"])
    assert before <= updated <= now_ms()
    # A new epoch (what was built for the parked one is stale; the next dispatch opens
    # epoch 3); the answer waits in the record; a new turn counts its dispatches and runs
    # afresh.
    assert (raw["status"], raw["epoch"]) == ("PENDING", "2")
    assert (raw["attempts"], raw["runs"]) == ("0", "0")
    assert json.loads(raw["resume"]) == {"i1": "yes"}
    assert json.loads(raw["a2a_message"]) == message
    assert "interrupts" not in raw and "input_deadline_ms" not in raw
    job = db.store.get(job_id)
    assert job is not None
    assert (job.status, job.resume, job.interrupts, job.a2a_message) == (
        JobStatus.PENDING,
        {"i1": "yes"},
        [],
        message,
    )
    # Open again (a lost dispatch is re-sent by the health check), no longer waiting.
    assert db.open_jobs() == {job_id: updated}
    assert db.redis.exists(KEY_JOBS_WAITING) == 0
    assert db.worker_jobs(W1) == set()
    assert db.counts() == {"PENDING": "1"}  # a resume is not a new job
    assert db.chain(job_id) == chain_before
    assert db.statuses(job_id)[-2:] == [parked_event(1), resumed_event(2)]
    assert db.log(job_id)[-1][:2] == ("status", updated)
    assert db.events.of(job_id) == [{"job_id": job_id, "status": "PENDING", "epoch": 2}]


def test_resume_without_a_message_keeps_the_one_that_started_the_job(db: AgentDb) -> None:
    first = {"role": "user", "parts": [{"text": "plan it"}]}
    spec = JobSpec(task_type="approval", payload={}, input_timeout_s=5, a2a_message=first)
    job_id, _ = db.parked(spec)

    assert db.store.resume(job_id, {"i1": 1}) == ("resumed", "2")

    assert json.loads(db.record(job_id)["a2a_message"]) == first


def test_a_resumed_agent_runs_at_the_next_epoch_and_can_park_again(db: AgentDb) -> None:
    job_id = db.resumed()

    # The coordinator sends it on from the resume's epoch (2): a new epoch (3), on any
    # worker; the answer stays in the record for the run that takes it.
    order = db.dispatch(job_id, expected_epoch=2, worker_id=W2)
    raw = db.record(job_id)
    assert (raw["status"], raw["epoch"], raw["assignee"]) == ("IN_PROGRESS", "3", W2)
    assert json.loads(raw["resume"]) == {"i1": "yes"}
    assert db.worker_jobs(W2) == {job_id}

    # It asks again: parked at epoch 3 with a new deadline; the old answer is gone.
    again = [{"id": "i2", "value": "and now?"}]
    clock_before = db.clock_ms()
    assert db.store.park(job_id, epoch=3, interrupts=again, cause=work_report(order))
    deadline = db.input_deadline(job_id, INPUT_TIMEOUT_S, clock_before, db.clock_ms())
    raw = db.record(job_id)
    assert (raw["status"], raw["epoch"]) == ("INPUT_REQUIRED", "3")
    assert "resume" not in raw
    assert json.loads(raw["interrupts"]) == again
    assert db.waiting() == {job_id: deadline}
    assert db.worker_jobs(W2) == set()
    assert db.statuses(job_id) == [
        PENDING_EVENT,
        assigned_event(1, W1),
        started_event(1, W1),
        parked_event(1),
        resumed_event(2),
        assigned_event(3, W2),
        started_event(3, W2),
        parked_event(3, again),
    ]


@pytest.mark.parametrize(
    "setup",
    [
        lambda db: (db.create(), "PENDING"),
        lambda db: (db.assigned_job(W1)[0], "ASSIGNED"),
        lambda db: (db.running()[0], "IN_PROGRESS"),
        lambda db: (db.resumed(), "PENDING"),
        lambda db: (_completed(db)[0], "COMPLETED"),
        lambda db: (_canceled(db)[0], "CANCELED"),
    ],
    ids=["new", "assigned", "running", "resumed-already", "completed", "canceled"],
)
def test_resume_refuses_a_job_that_is_not_waiting(
    setup: Callable[[AgentDb], tuple[str, str]], db: AgentDb
) -> None:
    job_id, status = setup(db)

    with db.unchanged(job_id):
        assert db.store.resume(job_id, {"i1": "late"}) == ("not_waiting", status)


def test_a_resume_makes_what_was_built_for_the_parked_epoch_stale(db: AgentDb) -> None:
    # While the agent was parked at epoch 1, a re-route request for epoch 1 was waiting
    # for a worker, and the run's work order and report were still around.
    job_id, order = db.parked()
    reroute = dispatch_order(job_id)
    assert db.store.resume(job_id, {"i1": "yes"}) == ("resumed", "2")

    # None of them moves, fails or finishes the resumed job.
    with db.unchanged(job_id):
        outcome = db.assign(job_id, expected_epoch=1, worker_id=W2, dispatch=reroute)
        assert outcome == AssignOutcome(AssignKind.STALE, epoch=2)
    with db.unchanged(job_id):
        late = db.store.finish(
            job_id,
            epoch=1,
            status=JobStatus.FAILED,
            error={"type": "NoEligibleWorkerError", "message": "no worker for epoch 1"},
        )
        assert late == FinishOutcome(FinishKind.STALE, status="PENDING")
    with db.unchanged(job_id):
        report = work_report(order)
        late = db.store.finish(job_id, epoch=1, status=JobStatus.COMPLETED, result=1, cause=report)
        assert late == FinishOutcome(FinishKind.STALE, status="PENDING")
    with db.unchanged(job_id):
        assert db.start_as(job_id, epoch=1, worker_id=W1, order=order) is StartKind.STALE
    with db.unchanged(job_id):
        assert db.store.park(job_id, epoch=1, interrupts=INTERRUPTS) is False

    # The dispatch for the resume's epoch takes it on, to epoch 3, answer and all.
    db.dispatch(job_id, expected_epoch=2, worker_id=W2)
    raw = db.record(job_id)
    assert (raw["status"], raw["epoch"], raw["assignee"]) == ("IN_PROGRESS", "3", W2)
    assert json.loads(raw["resume"]) == {"i1": "yes"}
    with db.unchanged(job_id):
        outcome = db.assign(job_id, expected_epoch=1, worker_id=W1, dispatch=reroute)
        assert outcome == AssignOutcome(AssignKind.STALE, epoch=3)


def test_resume_of_a_missing_job_creates_nothing(db: AgentDb) -> None:
    job_id = uuid.uuid4().hex

    assert db.store.resume(job_id, {"i1": "yes"}) == ("missing", "")

    assert db.dump() == {}
    assert db.events.of(job_id) == []


# --- cancel ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setup", "reply"),
    [
        (lambda db: db.create(), ["PENDING", "0", "", ""]),
        (lambda db: db.assigned_job(W1)[0], ["ASSIGNED", "1", W1, ""]),
        (lambda db: db.running(kind="handler")[0], ["IN_PROGRESS", "1", W1, "handler"]),
        (lambda db: db.running()[0], ["IN_PROGRESS", "1", W1, "agent"]),
        (lambda db: db.parked()[0], ["INPUT_REQUIRED", "1", W1, "agent"]),
        (lambda db: db.resumed(), ["PENDING", "2", W1, "agent"]),
    ],
    ids=["pending", "assigned", "running-handler", "running-agent", "parked", "resumed"],
)
def test_cancel_ends_an_unfinished_job(
    setup: Callable[[AgentDb], str], reply: list[str], db: AgentDb
) -> None:
    job_id = setup(db)
    db.seed_checkpoints(job_id)
    db.events.of(job_id)
    counts_before = db.counts()
    log_before = db.statuses(job_id)
    previous, epoch, assignee, _ = reply
    before = now_ms()

    assert db.store.cancel(job_id, CANCELED) == ["canceled", *reply]

    raw = db.record(job_id)
    finished = int(raw["finished_ms"])
    assert before <= finished <= now_ms()
    assert raw["updated_ms"] == raw["finished_ms"]
    assert (raw["status"], raw["epoch"], raw["result"]) == ("CANCELED", epoch, "null")
    assert json.loads(raw["error"]) == CANCELED
    assert "interrupts" not in raw and "resume" not in raw
    job = db.store.get(job_id)
    assert job is not None
    assert (job.status, job.result, job.error) == (JobStatus.CANCELED, None, CANCELED)
    # Out of every index; counted once; record, log and checkpoints expire with it.
    assert db.worker_jobs(W1) == set()
    assert db.open_jobs() == {}
    assert db.redis.exists(KEY_JOBS_WAITING) == 0
    assert db.counts() == {**counts_before, "CANCELED": "1"}
    assert 0 < db.ttl(KEY_JOB + job_id) <= RESULT_TTL_S
    assert 0 < db.ttl(KEY_JOB_LOG + job_id) <= RESULT_TTL_S
    assert all(0 < ttl <= RESULT_TTL_S for ttl in db.checkpoint_ttls(job_id))
    assert db.statuses(job_id) == [
        *log_before,
        final_event(JobStatus.CANCELED, int(epoch), error=CANCELED),
    ]
    assert db.log(job_id)[-1][:2] == ("status", finished)
    assert db.joblog.read(job_id)[-1].is_final
    assert announced(db.events.of(job_id)) == [("CANCELED", int(epoch), assignee, "")]
    assert previous == log_before[-1]["status"]


@pytest.mark.parametrize(
    "final", [JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.ABANDONED, JobStatus.CANCELED]
)
def test_cancel_refuses_a_final_job(final: JobStatus, db: AgentDb) -> None:
    job_id, _ = db.running()
    if final is JobStatus.CANCELED:
        assert db.store.cancel(job_id, CANCELED)[0] == "canceled"
    else:
        assert db.store.finish(job_id, epoch=1, status=final).kind is FinishKind.RECORDED

    with db.unchanged(job_id):
        assert db.store.cancel(job_id, {"type": "JobCanceledError", "message": "again"}) == [
            "final",
            final.value,
        ]

    assert db.counts()[final.value] == "1"


def test_cancel_of_a_missing_job_creates_nothing(db: AgentDb) -> None:
    job_id = uuid.uuid4().hex

    assert db.store.cancel(job_id, CANCELED) == ["missing"]

    assert db.dump() == {}
    assert db.events.of(job_id) == []


def test_a_canceled_queued_job_is_dropped_by_every_later_hop(db: AgentDb) -> None:
    # The work order is queued at w1 when the job is canceled.
    job_id, dispatch = db.assigned_job(W1)
    order = work_order(dispatch, W1, 1)
    assert db.store.cancel(job_id, CANCELED)[0] == "canceled"

    # The worker takes the order: dropped, nothing counted (no run, no execution).
    with db.unchanged(job_id):
        assert db.start_as(job_id, epoch=1, worker_id=W1, order=order) is StartKind.CANCELED
    # A copy of the dispatch, or a new one: the job is final.
    with db.unchanged(job_id):
        outcome = db.assign(job_id, expected_epoch=0, worker_id=W1, dispatch=dispatch)
        assert outcome == AssignOutcome(AssignKind.FINAL, status="CANCELED")
    with db.unchanged(job_id):
        outcome = db.assign(job_id, expected_epoch=1, worker_id=W2)
        assert outcome == AssignOutcome(AssignKind.FINAL, status="CANCELED")
    # A report of its epoch finds the cancellation recorded as the job's result.
    with db.unchanged(job_id):
        report = work_report(order)
        event = SIGNER.reply(report, MessageType.EVENT, {"job_id": job_id}, sender=DISTRIBUTOR)
        outcome_finish = db.store.finish(
            job_id, epoch=1, status=JobStatus.COMPLETED, result=3, cause=report, event=event
        )
        assert outcome_finish == FinishOutcome(
            FinishKind.ALREADY, status="CANCELED", result=None, error=CANCELED
        )

    raw = db.record(job_id)
    assert "runs" not in raw
    assert db.stats() == {}
    assert db.counts() == {"PENDING": "1", "CANCELED": "1"}


# --- finish ----------------------------------------------------------------------------


def test_finish_only_from_input_required_fails_a_parked_agent(db: AgentDb) -> None:
    # The coordinator fails an agent whose input deadline passed.
    job_id, _ = db.parked()
    db.seed_checkpoints(job_id)
    db.events.of(job_id)
    waiting = db.waiting()
    assert list(waiting) == [job_id]
    error = {"type": "InputTimeoutError", "message": "waited too long"}

    outcome = db.store.finish(
        job_id, epoch=1, status=JobStatus.FAILED, error=error, only_from=JobStatus.INPUT_REQUIRED
    )

    assert outcome == FinishOutcome(FinishKind.RECORDED, status="FAILED")
    raw = db.record(job_id)
    assert (raw["status"], raw["result"], json.loads(raw["error"])) == ("FAILED", "null", error)
    assert "interrupts" not in raw
    # Still in jobs:waiting: the sweep takes it out only once it published the result (a
    # crash in between is repaired by the next sweep).
    assert db.waiting() == waiting
    assert db.open_jobs() == {}
    assert db.counts() == {"PENDING": "1", "FAILED": "1"}
    assert 0 < db.ttl(KEY_JOB + job_id) <= RESULT_TTL_S
    assert 0 < db.ttl(KEY_JOB_LOG + job_id) <= RESULT_TTL_S
    assert all(0 < ttl <= RESULT_TTL_S for ttl in db.checkpoint_ttls(job_id))
    assert db.statuses(job_id)[-2:] == [
        parked_event(1),
        final_event(JobStatus.FAILED, 1, error=error),
    ]
    assert announced(db.events.of(job_id)) == [("FAILED", 1, W1, "")]

    db.store.stop_waiting(job_id)
    assert db.waiting() == {}
    assert db.redis.exists(KEY_JOBS_WAITING) == 0
    assert db.store.waiting_past(now_ms() + 10 * int(INPUT_TIMEOUT_S * 1000)) == []
    assert db.record(job_id) == raw  # the record is not touched
    db.store.stop_waiting(job_id)  # again (a repeated sweep): nothing to do, no error
    assert db.redis.exists(KEY_JOBS_WAITING) == 0


@pytest.mark.parametrize(
    ("status", "result", "error", "only_from", "with_cause"),
    [
        (
            JobStatus.FAILED,
            None,
            {"type": "NoEligibleWorkerError", "message": "no eligible worker"},
            None,
            False,
        ),
        (JobStatus.COMPLETED, {"late": True}, None, None, True),
        (JobStatus.ABANDONED, None, {"type": "JobAbandonedError", "message": "gone"}, None, False),
        (
            JobStatus.FAILED,
            None,
            {"type": "HandlerError", "message": "x"},
            JobStatus.IN_PROGRESS,
            True,
        ),
    ],
    ids=["no-worker", "late-report", "abandoned", "only-from-in-progress"],
)
def test_a_finish_of_the_parked_epoch_leaves_the_parked_job_alone(
    status: JobStatus,
    result: Any,
    error: dict[str, str] | None,
    only_from: JobStatus | None,
    with_cause: bool,
    db: AgentDb,
) -> None:
    # A parked job waits for a person: a late message of its epoch (a re-route's "no
    # worker", a copy of the report that parked it) must not end it.
    job_id, order = db.parked()
    db.seed_checkpoints(job_id)
    db.events.of(job_id)
    before = db.snapshot()
    cause = work_report(order) if with_cause else None
    event = (
        SIGNER.reply(cause, MessageType.EVENT, {"job_id": job_id}, sender=DISTRIBUTOR)
        if cause is not None
        else None
    )

    outcome = db.store.finish(
        job_id,
        epoch=1,
        status=status,
        result=result,
        error=error,
        cause=cause,
        event=event,
        only_from=only_from,
    )

    assert outcome == FinishOutcome(FinishKind.STALE, status="INPUT_REQUIRED")
    assert db.snapshot() == before  # checkpoints, waiting, log, counts: all as they were
    assert db.events.of(job_id) == []
    # It still waits: its input timeout (or an answer) is what ends it.
    timeout = {"type": "InputTimeoutError", "message": "waited too long"}
    failed = db.store.finish(
        job_id, epoch=1, status=JobStatus.FAILED, error=timeout, only_from=JobStatus.INPUT_REQUIRED
    )
    assert failed == FinishOutcome(FinishKind.RECORDED, status="FAILED")


@pytest.mark.parametrize(
    ("setup", "epoch", "status"),
    [
        # The sweep read the record at the parked epoch; the resume moved it on.
        (lambda db: db.resumed(), 1, "PENDING"),
        # At the current epoch, but no longer waiting for input.
        (lambda db: db.resumed(), 2, "PENDING"),
        (lambda db: db.running()[0], 1, "IN_PROGRESS"),
        (lambda db: _redispatched(db), 3, "ASSIGNED"),
    ],
    ids=["resumed-meanwhile", "resumed-current-epoch", "running", "resumed-and-dispatched"],
)
def test_finish_only_from_leaves_a_job_in_another_status_alone(
    setup: Callable[[AgentDb], str], epoch: int, status: str, db: AgentDb
) -> None:
    job_id = setup(db)

    with db.unchanged(job_id):
        outcome = db.store.finish(
            job_id,
            epoch=epoch,
            status=JobStatus.FAILED,
            error={"type": "InputTimeoutError", "message": "late"},
            only_from=JobStatus.INPUT_REQUIRED,
        )

    assert outcome == FinishOutcome(FinishKind.STALE, status=status)


def _redispatched(db: AgentDb) -> str:
    job_id = db.resumed()
    assert db.assign(job_id, expected_epoch=2, worker_id=W2) == AssignOutcome(
        AssignKind.OK, epoch=3
    )
    return job_id


@pytest.mark.parametrize("kind", ["agent", "handler"])
def test_finish_expires_checkpoints_only_for_an_agent_run(kind: str, db: AgentDb) -> None:
    job_id, _ = db.running(kind=kind)
    db.seed_checkpoints(job_id)

    outcome = db.store.finish(job_id, epoch=1, status=JobStatus.COMPLETED, result={"ok": True})

    assert outcome.kind is FinishKind.RECORDED
    assert 0 < db.ttl(KEY_JOB + job_id) <= RESULT_TTL_S
    assert 0 < db.ttl(KEY_JOB_LOG + job_id) <= RESULT_TTL_S
    ttls = db.checkpoint_ttls(job_id)
    if kind == "agent":
        assert all(0 < ttl <= RESULT_TTL_S for ttl in ttls), ttls
    else:
        assert ttls == [-1] * 6  # a handler's job has no thread: keys of that name are not its


def retry_reply(db: AgentDb, job_id: str, epoch: int) -> int:
    """``job_retry`` called with its raw KEYS/ARGV: the new count, or -1 (nothing changed)."""
    script = db.redis.register_script(load_script("job_retry"))
    return int(script(keys=[KEY_JOB + job_id], args=[epoch]))  # type: ignore[arg-type]


def test_count_retry_counts_the_runs_retries(db: AgentDb) -> None:
    job_id, _ = db.running()
    db.events.of(job_id)
    log_before = db.log(job_id)
    raw_before = db.record(job_id)

    assert [db.store.count_retry(job_id, 1) for _ in range(3)] == [True, True, True]
    assert retry_reply(db, job_id, 1) == 4

    raw = db.record(job_id)
    assert raw == {**raw_before, "retries": "4"}  # the count alone: no status, no time
    job = db.store.get(job_id)
    assert job is not None and (job.status, job.retries, job.runs) == (JobStatus.IN_PROGRESS, 4, 1)
    assert db.log(job_id) == log_before
    assert db.events.of(job_id) == []


@pytest.mark.parametrize(
    "setup",
    [
        _older_epoch,
        _newer_epoch,
        _not_started,
        _parked_already,
        _resumed,
        _completed,
        _canceled,
        _missing,
    ],
    ids=[
        "older-epoch",
        "newer-epoch",
        "not-started",
        "parked",
        "resumed",
        "completed",
        "canceled",
        "missing",
    ],
)
def test_count_retry_of_a_run_that_is_not_current_writes_nothing(
    setup: Callable[[AgentDb], tuple[str, int, str]], db: AgentDb
) -> None:
    # A handler's retry policy asks before each retry: a run that was re-routed,
    # canceled, parked or finished meanwhile must not retry (nor count one).
    job_id, epoch, status = setup(db)

    with db.unchanged(job_id):
        assert db.store.count_retry(job_id, epoch) is False
    with db.unchanged(job_id):
        assert retry_reply(db, job_id, epoch) == -1

    if status != "MISSING":
        assert db.record(job_id)["status"] == status
        assert "retries" not in db.record(job_id)


# --- the event log: joblog_append --------------------------------------------------------


def test_append_writes_events_of_the_current_run(db: AgentDb) -> None:
    job_id, _ = db.running()
    log_before = db.log(job_id)
    before = now_ms()

    written = db.joblog.append(
        job_id, 1, [("update", {"plan": {"step": 1}}), ("custom", {"progress": 0.5})]
    )

    assert written == ""
    log = db.log(job_id)
    assert log[:-2] == log_before
    (k1, ms1, d1), (k2, ms2, d2) = log[-2:]
    assert (k1, d1, k2, d2) == ("update", {"plan": {"step": 1}}, "custom", {"progress": 0.5})
    assert before <= ms1 == ms2 <= now_ms()
    events = db.joblog.read(job_id)
    assert [(e.kind, e.data) for e in events[-2:]] == [
        ("update", {"plan": {"step": 1}}),
        ("custom", {"progress": 0.5}),
    ]
    assert not any(e.is_final for e in events)
    assert db.record(job_id)["status"] == "IN_PROGRESS"  # the record is not touched


@pytest.mark.parametrize(
    "setup",
    [
        _older_epoch,
        _newer_epoch,
        _not_started,
        _parked_already,
        _resumed,
        _completed,
        _canceled,
        _missing,
    ],
    ids=[
        "older-epoch",
        "newer-epoch",
        "not-started",
        "parked",
        "resumed",
        "completed",
        "canceled",
        "missing",
    ],
)
def test_append_of_a_run_that_is_not_current_writes_nothing(
    setup: Callable[[AgentDb], tuple[str, int, str]], db: AgentDb
) -> None:
    job_id, epoch, status = setup(db)

    with db.unchanged(job_id):
        written = db.joblog.append(job_id, epoch, [("update", {"late": True})])

    assert written == status


def test_the_log_is_capped_and_keeps_the_newest(db: AgentDb) -> None:
    job_id, _ = db.running()
    small = JobLog(db.redis, cap=10)

    for n in range(30):
        assert small.append(job_id, 1, [("custom", {"n": n}) for _ in range(10)]) == ""

    # XADD MAXLEN ~ trims whole stream nodes (100 entries by default), so the log holds
    # about the cap: far fewer than the 303 appended, the newest last.
    length = int(db.redis.xlen(KEY_JOB_LOG + job_id))  # type: ignore[arg-type]
    assert 10 <= length <= 10 + 100
    kept = db.joblog.read(job_id, count=1000)
    assert len(kept) == length
    assert kept[-1].data == {"n": 29}
    # The oldest went first: the status events of the create, assign and start with them.
    assert all(e.kind == "custom" for e in kept)


# --- the event log: reading and following -------------------------------------------------


def finished_job_with_progress(db: AgentDb) -> tuple[str, list[JobLogEvent]]:
    """A job that ran with three progress events and completed; its whole log."""
    job_id, _ = db.running()
    for step in range(3):
        assert db.joblog.append(job_id, 1, [("update", {"step": step})]) == ""
    outcome = db.store.finish(job_id, epoch=1, status=JobStatus.COMPLETED, result=7)
    assert outcome.kind is FinishKind.RECORDED
    events = db.joblog.read(job_id)
    assert [(e.kind, e.data.get("status", e.data.get("step"))) for e in events] == [
        ("status", "PENDING"),
        ("status", "ASSIGNED"),
        ("status", "IN_PROGRESS"),
        ("update", 0),
        ("update", 1),
        ("update", 2),
        ("status", "COMPLETED"),
    ]
    return job_id, events


def stream_order(event_id: str) -> tuple[int, int]:
    ms, seq = event_id.split("-")
    return int(ms), int(seq)


def test_read_after_a_cursor_gives_exactly_the_later_events(db: AgentDb) -> None:
    job_id, events = finished_job_with_progress(db)

    ids = [e.id for e in events]
    assert len(set(ids)) == len(ids)
    assert sorted(ids, key=stream_order) == ids
    assert [e.is_final for e in events] == [False] * 6 + [True]
    assert events[-1].data == final_event(JobStatus.COMPLETED, 1, result=7)
    for i, event in enumerate(events):
        assert db.joblog.read(job_id, after=event.id) == events[i + 1 :]
    assert db.joblog.read(job_id, after=None) == events


def test_read_in_pages_continues_where_the_last_page_ended(db: AgentDb) -> None:
    job_id, events = finished_job_with_progress(db)

    pages: list[list[JobLogEvent]] = []
    after: str | None = None
    while page := db.joblog.read(job_id, after, count=2):
        pages.append(page)
        after = page[-1].id

    assert [len(p) for p in pages] == [2, 2, 2, 1]
    assert [e for page in pages for e in page] == events


def test_read_of_a_missing_job_is_empty(db: AgentDb) -> None:
    assert db.joblog.read(uuid.uuid4().hex) == []
    assert db.dump() == {}


def test_follow_reads_a_finished_log_and_ends_at_its_final_status(db: AgentDb) -> None:
    job_id, events = finished_job_with_progress(db)

    started = time.monotonic()
    assert list(db.joblog.follow(job_id)) == events
    assert list(db.joblog.follow(job_id, after=events[3].id)) == events[4:]
    assert time.monotonic() - started < 1  # nothing waited: the final status ends it


def test_follow_waits_for_events_as_they_come_until_the_job_is_final(db: AgentDb) -> None:
    job_id, _ = db.running()
    cursor = db.joblog.read(job_id)[-1].id  # IN_PROGRESS: the follower has seen it

    def run() -> None:
        for step in range(3):
            time.sleep(0.1)
            assert db.joblog.append(job_id, 1, [("custom", {"step": step})]) == ""
        time.sleep(0.1)
        db.store.cancel(job_id, CANCELED)
        # Nothing after the final status reaches a follower.
        db.redis.xadd(KEY_JOB_LOG + job_id, {"k": "custom", "ms": "0", "d": "{}"})

    writer = threading.Thread(target=run)
    writer.start()
    try:
        followed = list(db.joblog.follow(job_id, after=cursor, block_s=10))
    finally:
        writer.join(timeout=10)

    assert [(e.kind, e.data.get("step", e.data.get("status"))) for e in followed] == [
        ("custom", 0),
        ("custom", 1),
        ("custom", 2),
        ("status", "CANCELED"),
    ]
    assert followed[-1].is_final
    assert followed == db.joblog.read(job_id, after=cursor)[:4]


def test_follow_of_a_job_without_record_or_log_ends_at_once(db: AgentDb) -> None:
    started = time.monotonic()
    assert list(db.joblog.follow(uuid.uuid4().hex)) == []
    assert time.monotonic() - started < 1


def test_follow_with_block_s_ends_after_that_long_without_an_event(db: AgentDb) -> None:
    job_id, _ = db.parked()
    events = db.joblog.read(job_id)

    started = time.monotonic()
    assert list(db.joblog.follow(job_id, block_s=0.3)) == events
    assert 0.25 <= time.monotonic() - started < 3


def appended_before_the_over_check(
    db: AgentDb, monkeypatch: pytest.MonkeyPatch, write: Callable[[], None]
) -> list[int]:
    """Make ``db.joblog``'s first check whether the job is over run ``write`` first: what
    ``write`` appends lands between follow's empty read and that check. The list counts
    the checks."""
    real_over = db.joblog._over
    calls: list[int] = []

    def over(job_id: str) -> bool:
        calls.append(1)
        if len(calls) == 1:
            write()
        return real_over(job_id)

    monkeypatch.setattr(db.joblog, "_over", over)
    return calls


def test_follow_yields_the_final_event_appended_between_its_read_and_its_check(
    db: AgentDb, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id, _ = db.running()
    cursor = db.joblog.read(job_id)[-1].id  # IN_PROGRESS: the follower has seen it

    def finish() -> None:
        assert db.joblog.append(job_id, 1, [("custom", {"step": 9})]) == ""
        outcome = db.store.finish(job_id, epoch=1, status=JobStatus.COMPLETED, result=5)
        assert outcome.kind is FinishKind.RECORDED
        # Nothing after the final status reaches a follower.
        db.redis.xadd(KEY_JOB_LOG + job_id, {"k": "custom", "ms": "0", "d": "{}"})

    checks = appended_before_the_over_check(db, monkeypatch, finish)
    started = time.monotonic()
    followed = list(db.joblog.follow(job_id, after=cursor, block_s=5))

    assert time.monotonic() - started < 1  # no wait: the job was over at the check
    assert checks == [1]
    assert [(e.kind, e.data) for e in followed] == [
        ("custom", {"step": 9}),
        ("status", final_event(JobStatus.COMPLETED, 1, result=5)),
    ]
    assert followed[-1].is_final
    assert followed == db.joblog.read(job_id, after=cursor)[:2]


def test_follow_reads_past_a_full_batch_to_the_final_event(
    db: AgentDb, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id, _ = db.running()
    cursor = db.joblog.read(job_id)[-1].id

    def finish() -> None:  # more events in the gap than one read returns (100)
        for n in range(150):
            assert db.joblog.append(job_id, 1, [("custom", {"n": n})]) == ""
        assert db.store.finish(job_id, epoch=1, status=JobStatus.COMPLETED, result=1).kind is (
            FinishKind.RECORDED
        )

    appended_before_the_over_check(db, monkeypatch, finish)
    followed = list(db.joblog.follow(job_id, after=cursor, block_s=5))
    assert [e.data["n"] for e in followed[:-1]] == list(range(150))
    assert followed[-1].is_final


def test_follow_from_the_start_yields_a_whole_log_written_before_its_check(
    db: AgentDb, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The follower's first read finds no log yet; the job is created, run and canceled
    # before it checks whether the job is over.
    job_id = uuid.uuid4().hex

    def run() -> None:
        assert db.store.create(job_id, AGENT_SPEC, deadline_ms=now_ms() + 30_000)
        db.dispatch(job_id, expected_epoch=0)
        assert db.store.cancel(job_id, CANCELED)[0] == "canceled"

    checks = appended_before_the_over_check(db, monkeypatch, run)
    followed = list(db.joblog.follow(job_id, block_s=5))

    assert checks == [1]
    assert [e.data["status"] for e in followed] == [
        "PENDING",
        "ASSIGNED",
        "IN_PROGRESS",
        "CANCELED",
    ]
    assert followed == db.joblog.read(job_id)
    assert followed[-1].is_final and not any(e.is_final for e in followed[:-1])


def test_follow_from_the_final_cursor_ends_at_once(db: AgentDb) -> None:
    job_id, events = finished_job_with_progress(db)

    started = time.monotonic()
    assert list(db.joblog.follow(job_id, after=events[-1].id, block_s=2)) == []
    assert time.monotonic() - started < 1


# --- the owner index ---------------------------------------------------------------------


def test_create_indexes_an_owners_jobs_newest_first(db: AgentDb) -> None:
    alice = JobSpec(task_type="approval", payload={}, owner="alice")
    jobs: list[str] = []
    for _ in range(3):
        jobs.append(db.create(alice))
        time.sleep(0.005)  # distinct creation times
    bob = db.create(JobSpec(task_type="approval", payload={}, owner="bob"))
    nobody = db.create(JobSpec(task_type="approval", payload={}))

    created = {j: int(db.record(j)["created_ms"]) for j in jobs}
    assert sorted(created.values()) == list(created.values())
    assert len(set(created.values())) == 3
    pairs = db.redis.zrange(KEY_JOBS_OWNER + "alice", 0, -1, withscores=True)
    assert {j: int(score) for j, score in pairs} == created  # type: ignore[union-attr]
    # The index does not expire: it is capped by count (an agent may wait for days).
    assert db.ttl(KEY_JOBS_OWNER + "alice") == -1
    assert db.ttl(KEY_JOBS_OWNER + "bob") == -1
    assert db.record(jobs[0])["owner"] == "alice"
    job = db.store.get(jobs[0])
    assert job is not None and job.owner == "alice"
    assert "owner" not in db.record(nobody)
    owner_keys = set(db.redis.keys(KEY_JOBS_OWNER + "*"))  # type: ignore[arg-type]
    assert owner_keys == {KEY_JOBS_OWNER + "alice", KEY_JOBS_OWNER + "bob"}
    assert db.redis.exists("", KEY_JOBS_OWNER) == 0  # the ownerless job indexed nowhere

    newest_first = jobs[::-1]
    assert db.store.owned_by("alice", limit=10) == newest_first
    assert db.store.owned_by("alice", limit=2) == newest_first[:2]
    # before_ms pages back from the last job shown (exclusive).
    assert db.store.owned_by("alice", limit=2, before_ms=created[jobs[1]]) == [jobs[0]]
    assert db.store.owned_by("bob", limit=10) == [bob]
    assert db.store.owned_by("carol", limit=10) == []

    db.store.forget_owned("alice", [jobs[0], "never-there"])
    assert db.store.owned_by("alice", limit=10) == newest_first[:2]
    db.store.forget_owned("alice", [])
    assert db.store.owned_by("alice", limit=10) == newest_first[:2]


def test_a_duplicate_create_leaves_the_owner_index_alone(db: AgentDb) -> None:
    job_id = uuid.uuid4().hex
    assert db.store.create(job_id, JobSpec(task_type="t", payload={}, owner="alice"), deadline_ms=1)

    with db.unchanged(job_id):
        again = JobSpec(task_type="t", payload={}, owner="bob")
        assert db.store.create(job_id, again, deadline_ms=1) is False


def test_paging_an_owners_jobs_lists_each_job_once(db: AgentDb) -> None:
    spec = JobSpec(task_type="t", payload={}, owner="alice")
    jobs = [db.create(spec) for _ in range(3)]
    # Three submits in one millisecond (a batch): same creation time.
    db.redis.zadd(KEY_JOBS_OWNER + "alice", dict.fromkeys(jobs, 1_000))

    first = db.store.owned_by("alice", limit=2)
    rest = db.store.owned_by("alice", limit=2, before_ms=1_000, before_id=first[-1])

    assert sorted(first + rest) == sorted(jobs)


def owner_index(db: AgentDb, owner: str) -> dict[str, int]:
    pairs: list[tuple[str, float]] = db.redis.zrange(  # type: ignore[assignment]
        KEY_JOBS_OWNER + owner, 0, -1, withscores=True
    )
    return {job_id: int(score) for job_id, score in pairs}


def test_the_owner_index_keeps_the_newest_jobs_by_count_not_by_age(
    db: AgentDb, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jobs_module, "OWNER_INDEX_CAP", 3)
    alice = JobSpec(task_type="approval", payload={}, owner="alice")
    bob = db.create(JobSpec(task_type="approval", payload={}, owner="bob"))
    # A job of alice's created long ago (say a parked agent still waiting): no age limit.
    db.redis.zadd(KEY_JOBS_OWNER + "alice", {"ancient": 1})
    jobs: list[str] = []
    for _ in range(2):
        jobs.append(db.create(alice))
        time.sleep(0.005)  # distinct creation times
    created = {j: int(db.record(j)["created_ms"]) for j in jobs}
    assert owner_index(db, "alice") == {"ancient": 1, **created}
    assert db.ttl(KEY_JOBS_OWNER + "alice") == -1

    for _ in range(3):
        jobs.append(db.create(alice))
        time.sleep(0.005)
    created = {j: int(db.record(j)["created_ms"]) for j in jobs}
    assert len(set(created.values())) == 5

    # The newest three, by rank; the trimmed jobs' records are not touched.
    assert owner_index(db, "alice") == {j: created[j] for j in jobs[-3:]}
    assert db.store.owned_by("alice", limit=10) == jobs[::-1][:3]
    assert all(db.record(j)["owner"] == "alice" for j in jobs)
    assert db.ttl(KEY_JOBS_OWNER + "alice") == -1
    assert owner_index(db, "bob") == {bob: int(db.record(bob)["created_ms"])}
    assert db.ttl(KEY_JOBS_OWNER + "bob") == -1

    # Finishing jobs gives the index no TTL either.
    job_id = jobs[-1]
    db.dispatch(job_id, expected_epoch=0)
    outcome = db.store.finish(job_id, epoch=1, status=JobStatus.COMPLETED, result=1)
    assert outcome.kind is FinishKind.RECORDED
    assert db.ttl(KEY_JOBS_OWNER + "alice") == -1
    assert owner_index(db, "alice") == {j: created[j] for j in jobs[-3:]}


def test_the_owner_index_cap_is_owner_index_cap(db: AgentDb) -> None:
    # The store passes OWNER_INDEX_CAP (10,000) to job_create: a full index drops its
    # oldest job for the new one, whatever its age.
    assert OWNER_INDEX_CAP == 10_000
    key = KEY_JOBS_OWNER + "alice"
    db.redis.zadd(key, {f"old-{n:05d}": n for n in range(1, OWNER_INDEX_CAP + 1)})

    job_id = db.create(JobSpec(task_type="approval", payload={}, owner="alice"))

    assert db.redis.zcard(key) == OWNER_INDEX_CAP
    assert db.redis.zscore(key, "old-00001") is None
    assert db.redis.zscore(key, "old-00002") == 2
    assert db.redis.zscore(key, job_id) == int(db.record(job_id)["created_ms"])
    assert db.ttl(key) == -1


# --- a multi-turn agent --------------------------------------------------------------------


def test_an_agent_can_be_resumed_more_often_than_max_attempts(db: AgentDb) -> None:
    job_id = db.create()
    epoch = 0
    for turn in range(MAX_ATTEMPTS + 1):
        outcome = db.assign(job_id, expected_epoch=epoch, worker_id=W1)
        assert outcome == AssignOutcome(AssignKind.OK, epoch=epoch + 1), f"dispatch {turn + 1}"
        epoch = outcome.epoch
        order = work_order(dispatch_order(job_id), W1, epoch)
        assert db.start_as(job_id, epoch=epoch, worker_id=W1, order=order) is StartKind.RUN
        assert db.store.park(job_id, epoch=epoch, interrupts=INTERRUPTS)
        # Each resume opens an epoch of its own; each dispatch the next one.
        assert db.store.resume(job_id, {"i1": turn}) == ("resumed", str(epoch + 1))
        epoch += 1
        raw = db.record(job_id)
        assert (raw["status"], raw["epoch"], raw["attempts"], raw["runs"]) == (
            "PENDING",
            str(epoch),
            "0",
            "0",
        )
    assert epoch == 2 * (MAX_ATTEMPTS + 1)


# --- the checkpoint fence ------------------------------------------------------------------


def test_a_fenced_write_at_the_current_epoch_is_stored(db: AgentDb) -> None:
    job_id, _ = db.running()
    saver = RedisSaver(db.redis)
    fence = fence_of(job_id, 1)

    stored = put_checkpoint(saver, job_id, 1, fence)
    config = thread_config(job_id, fence, stored["configurable"]["checkpoint_id"])
    saver.put_writes(config, [("count", 2)], "task-1")

    got = saver.get_tuple(thread_config(job_id))
    assert got is not None
    assert got.checkpoint["channel_values"] == {"count": 1}
    assert got.checkpoint["id"] == stored["configurable"]["checkpoint_id"]
    assert [(w[1], w[2]) for w in got.pending_writes or []] == [("count", 2)]
    assert all(db.redis.exists(key) for key in thread_keys(job_id))


def _stale_checkpoint_writer(db: AgentDb) -> tuple[str, int, str]:
    # w1 ran it at epoch 1 and was declared dead; w2 runs it at epoch 2 and checkpoints.
    job_id, epoch, status = _older_epoch(db)
    put_checkpoint(RedisSaver(db.redis), job_id, 5, fence_of(job_id, 2))
    return job_id, epoch, status


@pytest.mark.parametrize(
    "setup",
    [
        _stale_checkpoint_writer,
        _newer_epoch,
        _not_started,
        _parked_already,
        _resumed,
        _completed,
        _canceled,
        _missing,
    ],
    ids=[
        "older-epoch",
        "newer-epoch",
        "not-started",
        "parked",
        "resumed",
        "completed",
        "canceled",
        "missing",
    ],
)
def test_fenced_writes_of_a_run_that_is_not_current_are_refused(
    setup: Callable[[AgentDb], tuple[str, int, str]], db: AgentDb
) -> None:
    job_id, epoch, status = setup(db)
    if status != "MISSING":
        db.seed_checkpoints(job_id)  # an earlier checkpoint of the thread (keep_last=1 trims)
    saver = RedisSaver(db.redis, keep_last=1)
    fence = fence_of(job_id, epoch)
    if status == "MISSING":
        refusal = "^checkpoint write refused: job is "  # no record: no status, no epoch
    else:
        current = db.record(job_id)["epoch"]
        refusal = f"^checkpoint write refused: job is {status} at epoch {current}$"
    before = db.snapshot()

    with pytest.raises(FencedWriteError, match=refusal) as put_refused:
        put_checkpoint(saver, job_id, 9, fence)
    config = thread_config(job_id, fence, "1ef00000-0000-6000-8000-000000000000")
    with pytest.raises(FencedWriteError, match=refusal):
        saver.put_writes(config, [("count", 10), ("__interrupt__", "x")], "task-9")

    assert db.snapshot() == before
    assert isinstance(put_refused.value, CheckpointError)
    assert put_refused.value.__cause__ is None


def test_async_fenced_writes_are_refused_once_the_job_is_canceled(db: AgentDb) -> None:
    job_id, _ = db.running()
    fence = fence_of(job_id, 1)

    async def run() -> None:
        aclient = redis.asyncio.Redis.from_url(redis_url(15))
        try:
            saver = RedisSaver(db.redis, aclient)
            cp = checkpoint(1)
            stored = await saver.aput(
                thread_config(job_id, fence), cp, {}, {"count": cp["channel_versions"]["count"]}
            )
            config = thread_config(job_id, fence, stored["configurable"]["checkpoint_id"])
            await saver.aput_writes(config, [("count", 2)], "task-1")
            assert db.store.cancel(job_id, CANCELED)[0] == "canceled"
            before = db.snapshot()
            cp = checkpoint(2)
            with pytest.raises(FencedWriteError, match="job is CANCELED at epoch 1"):
                await saver.aput(config, cp, {}, {"count": cp["channel_versions"]["count"]})
            with pytest.raises(FencedWriteError, match="job is CANCELED at epoch 1"):
                await saver.aput_writes(config, [("count", 3)], "task-2")
            assert db.snapshot() == before
        finally:
            await aclient.aclose()

    asyncio.run(run())


class Counter(TypedDict):
    n: int


def counting_graph(saver: RedisSaver) -> Any:
    graph = StateGraph(Counter)
    graph.add_node("bump", lambda state: {"n": state["n"] + 1})
    graph.add_edge(START, "bump")
    graph.add_edge("bump", END)
    return graph.compile(checkpointer=saver)


def test_a_graph_run_with_a_fence_checkpoints_until_its_job_is_canceled(db: AgentDb) -> None:
    job_id, _ = db.running()
    config: RunnableConfig = {"configurable": {"thread_id": job_id, FENCE: fence_of(job_id, 1)}}
    graph = counting_graph(RedisSaver(db.redis))

    assert graph.invoke({"n": 1}, config) == {"n": 2}
    assert graph.get_state(config).values == {"n": 2}

    assert db.store.cancel(job_id, CANCELED)[0] == "canceled"
    before = db.snapshot()
    with pytest.raises(FencedWriteError, match="job is CANCELED at epoch 1"):
        graph.invoke({"n": 10}, config)
    assert db.snapshot() == before
