"""Agents as jobs on real tiers: results, interrupts and resume, progress, cancel, retries,
time limits (test agents in tests/support/graph_agents.py)."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import celery.exceptions
import ormsgpack
import pytest
import redis
from celery.result import AsyncResult
from conftest import redis_url
from langgraph.checkpoint.serde.jsonplus import EXT_CONSTRUCTOR_POS_ARGS
from support.deployments import DeploymentClient, deployment_on
from support.polling import wait_for

from project.client import submit_many
from project.core import control
from project.core.constants import KEY_JOB_LOG, checkpoint_keys
from project.core.errors import (
    HandlerError,
    InputTimeoutError,
    JobCanceledError,
    JobNotWaitingError,
    JobTimeLimitError,
)
from project.core.models import JobStatus
from project.core.runtime import Runtime
from project.core.settings import Settings
from project.core.state.joblog import JobLogEvent

pytestmark = pytest.mark.integration

DB = 13
SUPPORT = Path(__file__).parent.parent / "support"


class Agents(DeploymentClient):
    """The deployment with the test agents, and the job API on its database."""

    def __init__(self, deployment: object) -> None:
        super().__init__(deployment, DB, "agents-test")  # type: ignore[arg-type]
        self.rt = Runtime(Settings(redis_url=redis_url(DB)))

    def submit(self, task_type: str, payload: dict[str, object], **options: object) -> AsyncResult:
        job = {"task_type": task_type, "payload": payload, **options}
        return submit_many([job], celery_app=self.client, store=self.jobs)[0]

    def steps(self, job_id: str) -> dict[str, int]:
        raw = self.redis.hgetall(f"test:steps:{job_id}")
        return {k: int(v) for k, v in raw.items()}

    def status(self, job_id: str) -> JobStatus | None:
        record = self.jobs.get(job_id)
        return record.status if record is not None else None

    def wait_status(self, job_id: str, status: JobStatus) -> None:
        wait_for(lambda: self.status(job_id) is status, 30, f"job {job_id} to be {status}")

    def events(self, job_id: str, after: str | None = None) -> list[JobLogEvent]:
        return list(control.events(self.rt, job_id, after, block_s=30))


@pytest.fixture(scope="module")
def agents(redis_server: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agents]:
    with deployment_on(
        DB,
        tmp_path_factory.mktemp("agents"),
        beat=True,
        AGENTS_HANDLER_MODULES="graph_agents",
        AGENTS_HEALTH_CHECK_INTERVAL_S="1",
        AGENTS_HEARTBEAT_INTERVAL_S="0.5",
        AGENTS_HEARTBEAT_TIMEOUT_S="3",
        PYTHONPATH=str(SUPPORT),
    ) as deployment:
        yield Agents(deployment)


def test_an_agent_runs_its_steps_once_and_its_output_is_the_result(agents: Agents) -> None:
    result = agents.submit("steps", {"steps": 4})
    assert result.get(timeout=30) == [0, 1, 2, 3]
    assert agents.steps(result.id) == {"s0": 1, "s1": 1, "s2": 1, "s3": 1}
    view = control.view(agents.rt, result.id)
    assert view.status is JobStatus.COMPLETED and view.result == [0, 1, 2, 3]


def test_the_event_log_holds_status_updates_and_custom_events_in_order(agents: Agents) -> None:
    result = agents.submit("steps", {"steps": 3})
    result.get(timeout=30)
    events = agents.events(result.id)
    statuses = [e.data["status"] for e in events if e.kind == "status"]
    assert statuses == ["PENDING", "ASSIGNED", "IN_PROGRESS", "COMPLETED"]
    custom = [e.data["step"] for e in events if e.kind == "custom"]
    assert custom == [0, 1, 2]
    updates = [next(iter(e.data)) for e in events if e.kind == "update"]
    assert updates == ["s0", "s1", "s2"]
    ids = [e.id for e in events]
    assert ids == sorted(ids, key=lambda i: tuple(int(p) for p in i.split("-")))
    # Reading on from any cursor gives exactly the events after it.
    middle = events[3].id
    assert [e.id for e in agents.events(result.id, after=middle)] == ids[4:]


def test_interrupt_parks_the_job_and_resume_finishes_it(agents: Agents) -> None:
    result = agents.submit("approval", {"text": "the plan"})
    agents.wait_status(result.id, JobStatus.INPUT_REQUIRED)
    view = control.view(agents.rt, result.id)
    assert [i.value for i in view.interrupts] == [{"question": "approve the plan?", "n": 0}]
    assert result.id not in agents.jobs.open_jobs_of(view.worker)  # its slot is free
    with pytest.raises(celery.exceptions.TimeoutError):  # .get() keeps waiting
        result.get(timeout=1)
    control.resume(agents.rt, result.id, "yes", celery_app=agents.client)
    final = result.get(timeout=30)
    assert final["answers"] == ["yes"]
    assert agents.steps(result.id) == {"ask": 2, "finish": 1}  # asked, then resumed once
    parked = [e for e in agents.events(result.id) if e.data.get("status") == "INPUT_REQUIRED"]
    assert parked[0].data["interrupts"][0]["value"]["question"] == "approve the plan?"


def test_several_interrupts_are_answered_one_by_one(agents: Agents) -> None:
    result = agents.submit("approval", {"text": "x", "questions": 2})
    for answer in ("first", "second"):
        agents.wait_status(result.id, JobStatus.INPUT_REQUIRED)
        control.resume(agents.rt, result.id, answer, celery_app=agents.client)
    assert result.get(timeout=30)["answers"] == ["first", "second"]


def test_resuming_a_job_that_is_not_waiting_is_a_clear_error(agents: Agents) -> None:
    result = agents.submit("steps", {"steps": 1})
    result.get(timeout=30)
    with pytest.raises(JobNotWaitingError, match="COMPLETED, not waiting for input"):
        control.resume(agents.rt, result.id, "yes", celery_app=agents.client)


def test_an_agent_waiting_past_its_input_timeout_fails(agents: Agents) -> None:
    result = agents.submit("approval", {"text": "t"}, input_timeout_s=1)
    with pytest.raises(InputTimeoutError, match=r"waited for input longer than 1\.0s"):
        result.get(timeout=30)
    assert agents.status(result.id) is JobStatus.FAILED


def test_cancel_a_waiting_agent(agents: Agents) -> None:
    result = agents.submit("approval", {"text": "t"})
    agents.wait_status(result.id, JobStatus.INPUT_REQUIRED)
    outcome = control.cancel(agents.rt, result.id, celery_app=agents.client)
    assert outcome.canceled and outcome.status is JobStatus.CANCELED
    with pytest.raises(JobCanceledError):
        result.get(timeout=10)
    again = control.cancel(agents.rt, result.id, celery_app=agents.client)
    assert not again.canceled and "already" in again.message


def test_cancel_a_job_no_worker_has_taken_yet(agents: Agents) -> None:
    result = agents.submit("steps", {"steps": 1}, requirements={"worker_ids": ["nobody"]})
    agents.wait_status(result.id, JobStatus.PENDING)
    outcome = control.cancel(agents.rt, result.id, celery_app=agents.client)
    assert outcome.canceled and "it was PENDING" in outcome.message
    with pytest.raises(JobCanceledError):
        result.get(timeout=10)
    time.sleep(1.5)  # the distributor's next try finds it canceled and lets it go
    record = agents.jobs.get(result.id)
    assert record is not None and record.status is JobStatus.CANCELED and record.epoch == 0


def test_cancel_a_job_queued_at_a_worker_drops_it_on_arrival(agents: Agents) -> None:
    on_w1 = {"worker_ids": ["w1"]}
    busy = [agents.submit("generic", {"sleep_s": 3, "echo": n}, requirements=on_w1) for n in (1, 2)]
    for job in busy:
        agents.wait_status(job.id, JobStatus.IN_PROGRESS)
    queued = agents.submit("steps", {"steps": 2}, requirements=on_w1)
    agents.wait_status(queued.id, JobStatus.ASSIGNED)
    control.cancel(agents.rt, queued.id, celery_app=agents.client)
    with pytest.raises(JobCanceledError):
        queued.get(timeout=10)
    assert [job.get(timeout=30) for job in busy] == [{"result": 1}, {"result": 2}]
    time.sleep(1)  # w1 has taken the canceled order by now, and dropped it
    record = agents.jobs.get(queued.id)
    assert record is not None and record.runs == 0 and record.status is JobStatus.CANCELED
    assert agents.steps(queued.id) == {}


def test_cancel_a_running_agent_stops_it_at_the_next_step(agents: Agents) -> None:
    result = agents.submit("steps", {"steps": 10, "sleep_s": 0.5})
    wait_for(lambda: agents.steps(result.id).get("s1", 0) >= 1, 30, "step s1 to run")
    control.cancel(agents.rt, result.id, celery_app=agents.client)
    with pytest.raises(JobCanceledError):
        result.get(timeout=10)
    time.sleep(2)
    ran = agents.steps(result.id)
    assert len(ran) <= 4, ran  # the step in flight may finish; no later one starts
    assert agents.status(result.id) is JobStatus.CANCELED


def test_cancel_a_running_handler_terminates_it(agents: Agents) -> None:
    result = agents.submit("generic", {"sleep_s": 30, "echo": 1})
    agents.wait_status(result.id, JobStatus.IN_PROGRESS)
    control.cancel(agents.rt, result.id, celery_app=agents.client)
    with pytest.raises(JobCanceledError):
        result.get(timeout=10)
    # The worker's slot is free again: a new job runs at once.
    assert agents.submit("generic", {"echo": 2}).get(timeout=30) == {"result": 2}


def test_transient_failures_are_retried_and_counted(agents: Agents) -> None:
    for task_type in ("flaky_agent", "flaky_handler"):
        result = agents.submit(task_type, {"failures": 2})
        result.get(timeout=30)
        view = control.view(agents.rt, result.id)
        assert view.retries == 2, task_type
        assert agents.steps(result.id)["flaky"] == 3
        record = agents.jobs.get(result.id)
        assert record is not None and record.runs == 1  # retries are not runs
    assert agents.steps(result.id).get("before") is None  # the handler has no such step


def test_retries_give_up_after_the_policy_allows(agents: Agents) -> None:
    result = agents.submit("flaky_agent", {"failures": 10})
    with pytest.raises(HandlerError, match="TransientError"):
        result.get(timeout=30)
    assert control.view(agents.rt, result.id).retries == 3
    assert agents.steps(result.id) == {"before": 1, "flaky": 4}  # only the failed step reran


def test_a_run_over_its_time_limit_fails_typed(agents: Agents) -> None:
    result = agents.submit("slow", {"sleep_s": 20})
    with pytest.raises(JobTimeLimitError, match=r"time limit of 1\.0s"):
        result.get(timeout=30)
    record = agents.jobs.get(result.id)
    assert record is not None and record.status is JobStatus.FAILED
    # Its slot is free: both of that worker's slots take new jobs at once.
    on_it = {"worker_ids": [record.assignee]}
    after = [agents.submit("generic", {"echo": n}, requirements=on_it) for n in (1, 2)]
    assert [job.get(timeout=10) for job in after] == [{"result": 1}, {"result": 2}]


def test_a_run_that_ignores_its_soft_time_limit_is_stopped_and_fails_typed(
    agents: Agents,
) -> None:
    result = agents.submit("stubborn", {"sleep_s": 60})
    with pytest.raises(JobTimeLimitError, match="ignored it; its run was stopped"):
        result.get(timeout=40)  # the hard limit: 1 s + the 10 s grace
    record = agents.jobs.get(result.id)
    assert record is not None and record.status is JobStatus.FAILED and record.epoch == 1
    on_it = {"worker_ids": [record.assignee]}
    assert agents.submit("generic", {"echo": 3}, requirements=on_it).get(timeout=30) == {
        "result": 3
    }


# --- durability -------------------------------------------------------------------


def _running_on(agents: Agents, job_id: str, step: str) -> str:
    """Wait until the job has run ``step``; return the worker running it."""
    wait_for(lambda: agents.steps(job_id).get(step, 0) >= 1, 30, f"step {step} to run")
    record = agents.jobs.get(job_id)
    assert record is not None and record.status is JobStatus.IN_PROGRESS
    return record.assignee


def _restart(agents: Agents, name: str) -> None:
    agents.deployment.start([name])
    agents.deployment.wait_ready(timeout_s=60)
    wait_for(lambda: name not in agents.registry.dead_agents(), 30, f"{name} re-admitted")


def test_a_killed_workers_agent_resumes_elsewhere_from_its_last_step(agents: Agents) -> None:
    result = agents.submit("steps", {"steps": 8, "sleep_s": 0.4})
    victim = _running_on(agents, result.id, "s2")
    killed_at_ms = time.time() * 1000
    agents.deployment.kill(victim)
    try:
        assert result.get(timeout=60) == list(range(8))
        ran = agents.steps(result.id)
        assert sorted(ran) == sorted(f"s{i}" for i in range(8))
        twice = [step for step, runs in ran.items() if runs > 1]
        assert len(twice) <= 1 and all(runs <= 2 for runs in ran.values()), ran
        record = agents.jobs.get(result.id)
        assert record is not None and record.assignee != victim and record.epoch == 2
        resumed = [
            e for e in agents.events(result.id) if e.kind == "custom" and e.ms > killed_at_ms
        ]
        print(  # the figure the issue asks for, from this run
            f"\nkill -> agent running again: {resumed[0].ms - killed_at_ms:.0f} ms; "
            f"steps run twice: {twice or 'none'}"
        )
    finally:
        _restart(agents, victim)


def test_a_stale_worker_that_comes_back_writes_nothing_to_the_thread(agents: Agents) -> None:
    result = agents.submit("steps", {"steps": 6, "sleep_s": 0.4})
    stale = _running_on(agents, result.id, "s1")
    agents.deployment.signal(stale, signal.SIGSTOP)
    try:
        assert result.get(timeout=60) == list(range(6))
        thread = _thread_snapshot(agents, result.id)
        log_length = agents.redis.xlen(KEY_JOB_LOG + result.id)
    finally:
        agents.deployment.signal(stale, signal.SIGCONT)
    # The paused run wakes up mid-step; it may finish that step's code, but every write
    # it tries (checkpoint, pending writes, events) is refused by the epoch fence.
    time.sleep(3)
    assert _thread_snapshot(agents, result.id) == thread
    assert agents.redis.xlen(KEY_JOB_LOG + result.id) == log_length
    record = agents.jobs.get(result.id)
    assert record is not None and record.status is JobStatus.COMPLETED and record.epoch == 2
    wait_for(lambda: stale not in agents.registry.dead_agents(), 30, f"{stale} re-admitted")


def _thread_snapshot(agents: Agents, job_id: str) -> dict[str, object]:
    raw = redis.Redis.from_url(redis_url(DB))  # checkpoints are bytes
    snapshot: dict[str, object] = {}
    for key in checkpoint_keys(job_id):
        kind = raw.type(key)
        snapshot[key] = raw.hgetall(key) if kind == b"hash" else raw.zrange(key, 0, -1)
    raw.close()
    assert any(snapshot.values())
    return snapshot


def test_a_crafted_checkpoint_cannot_make_a_worker_import_or_call(
    agents: Agents, tmp_path: Path
) -> None:
    """A checkpoint planted in Redis for a parked agent: resuming it fails the job with a
    typed error, and the worker imports and calls nothing the data names."""
    result = agents.submit("approval", {"text": "t"})
    agents.wait_status(result.id, JobStatus.INPUT_REQUIRED)
    marker = tmp_path / "called"
    evil = ormsgpack.packb(
        {
            "x": ormsgpack.Ext(
                EXT_CONSTRUCTOR_POS_ARGS, ormsgpack.packb(["os", "system", [f"touch {marker}"]])
            )
        }
    )
    raw = redis.Redis.from_url(redis_url(DB))
    blobs = checkpoint_keys(result.id)[3]
    fields = raw.hkeys(blobs)
    assert fields
    for field in fields:
        raw.hset(blobs, field, ormsgpack.packb(["msgpack", evil]))
    control.resume(agents.rt, result.id, "yes", celery_app=agents.client)
    with pytest.raises(HandlerError, match="checkpoint"):
        result.get(timeout=30)
    assert not marker.exists()
