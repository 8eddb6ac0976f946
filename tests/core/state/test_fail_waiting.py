"""The coordinator's input-timeout sweep (:func:`project.core.control.fail_waiting`) against a
real redis-server, with its results published to a Celery result backend on that Redis.

A parked agent whose input deadline passed is failed with InputTimeoutError; a job leaves
``jobs:waiting`` only once its result is published, so a sweep that crashed in between is
repaired by the next one; a job resumed meanwhile is left alone.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from celery import Celery
from conftest import redis_url
from redis import Redis
from test_agent_job_scripts import AGENT_SPEC, AgentDb
from test_job_scripts import W1, JobEvents, announced

from project.core.celery_app.config import celery_config
from project.core.constants import KEY_JOBS_WAITING
from project.core.control import fail_waiting
from project.core.errors import InputTimeoutError
from project.core.models import JobSpec, JobStatus
from project.core.runtime import Runtime
from project.core.settings import Settings
from project.core.state.jobs import FinishKind
from project.core.state.results import error_to_dict

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

TIMEOUT_S = 0.05
TIMED = JobSpec(task_type="approval", payload={"text": "the plan"}, input_timeout_s=TIMEOUT_S)


@pytest.fixture
def db(redis_client: Redis) -> Iterator[AgentDb]:
    """The flushed scratch database (15) with a job store on it, its announcements read."""
    events = JobEvents(redis_client)
    raw = Redis.from_url(redis_url(15))
    yield AgentDb(redis_client, raw, events)
    raw.close()
    events.close()


@pytest.fixture
def rt(db: AgentDb) -> Iterator[Runtime]:
    """The coordinator's runtime on the scratch database."""
    runtime = Runtime(Settings(redis_url=redis_url(15)))
    yield runtime
    runtime.redis.close()


@pytest.fixture
def backend_app(rt: Runtime) -> Iterator[Celery]:
    """A Celery app whose result backend is the scratch database (where apps read results)."""
    app = Celery("fail-waiting", set_as_current=False)
    app.conf.update(celery_config(rt.settings))
    yield app
    app.close()


def parked_past_its_deadline(db: AgentDb) -> str:
    """An agent job parked at epoch 1 whose input deadline has passed."""
    job_id, _ = db.parked(TIMED)
    deadline = int(db.record(job_id)["input_deadline_ms"])
    while db.clock_ms() <= deadline:  # Redis's clock, as the sweep reads it
        time.sleep(0.01)
    assert db.store.waiting_past(db.clock_ms()) == [job_id]
    return job_id


def timeout_message(job_id: str) -> str:
    return f"job {job_id} waited for input longer than {TIMEOUT_S}s"


def result_key(job_id: str) -> str:
    return f"celery-task-meta-{job_id}"


def expect_published_timeout(app: Celery, job_id: str) -> None:
    result = app.AsyncResult(job_id)
    assert result.state == "FAILURE"
    with pytest.raises(InputTimeoutError) as failed:
        result.get(timeout=5)
    assert str(failed.value) == timeout_message(job_id)


def test_a_parked_job_past_its_deadline_fails_with_input_timeout(
    db: AgentDb, rt: Runtime, backend_app: Celery
) -> None:
    job_id = parked_past_its_deadline(db)
    later_id, _ = db.parked(AGENT_SPEC)  # waits 30 s: not due
    later_waiting = db.waiting()[later_id]
    db.events.of(job_id)

    assert fail_waiting(rt, celery_app=backend_app) == [job_id]

    error = {"type": "InputTimeoutError", "message": timeout_message(job_id)}
    job = rt.jobs.get(job_id)
    assert job is not None
    assert (job.status, job.epoch, job.result, job.error) == (JobStatus.FAILED, 1, None, error)
    assert announced(db.events.of(job_id)) == [("FAILED", 1, W1, "")]
    assert db.counts() == {"PENDING": "2", "FAILED": "1"}
    expect_published_timeout(backend_app, job_id)
    # Out of jobs:waiting once published; the job not due is still there, still parked.
    assert db.waiting() == {later_id: later_waiting}
    assert db.record(later_id)["status"] == "INPUT_REQUIRED"

    # The next sweep finds nothing to do.
    before = db.dump()
    assert fail_waiting(rt, celery_app=backend_app) == []
    assert db.dump() == before
    assert db.events.of(job_id) == []


def _resume_after(
    real: Callable[..., Any], db: AgentDb, job_id: str, seen: list[dict[str, Any]]
) -> Callable[..., Any]:
    """``real``, then the job's resume (and a snapshot of the keyspace right after it)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        value = real(*args, **kwargs)
        if not seen:
            assert db.store.resume(job_id, {"i1": "yes"}) == ("resumed", "2")
            seen.append(db.dump())
        return value

    return call


@pytest.mark.parametrize("when", ["waiting_past", "get"], ids=["before-read", "after-read"])
def test_a_job_resumed_meanwhile_is_left_alone(
    when: str, db: AgentDb, rt: Runtime, backend_app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The answer comes in while the sweep runs: after it listed the job as due and
    # before ("before-read") or after ("after-read") it read the job's record.
    job_id = parked_past_its_deadline(db)
    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(rt.jobs, when, _resume_after(getattr(rt.jobs, when), db, job_id, seen))

    assert fail_waiting(rt, celery_app=backend_app) == []

    assert len(seen) == 1
    assert db.dump() == seen[0]  # nothing written after the resume, no result published
    raw = db.record(job_id)
    assert (raw["status"], raw["epoch"]) == ("PENDING", "2")
    assert json.loads(raw["resume"]) == {"i1": "yes"}
    assert db.waiting() == {}
    assert not db.redis.exists(result_key(job_id))
    assert backend_app.AsyncResult(job_id).state == "PENDING"  # Celery's "no result"


def test_a_job_final_but_still_waiting_is_published_again_and_stops_waiting(
    db: AgentDb, rt: Runtime, backend_app: Celery
) -> None:
    # A sweep recorded the timeout, then crashed before it published the result.
    job_id = parked_past_its_deadline(db)
    error = error_to_dict(InputTimeoutError(timeout_message(job_id)))
    outcome = rt.jobs.finish(
        job_id,
        epoch=1,
        status=JobStatus.FAILED,
        error=error,
        only_from=JobStatus.INPUT_REQUIRED,
    )
    assert outcome.kind is FinishKind.RECORDED
    assert list(db.waiting()) == [job_id]
    assert not db.redis.exists(result_key(job_id))
    db.events.of(job_id)
    record = db.record(job_id)
    log = db.log(job_id)

    assert fail_waiting(rt, celery_app=backend_app) == []  # it failed none itself

    expect_published_timeout(backend_app, job_id)
    assert db.waiting() == {}
    # The record is not touched, the failure not counted twice, nothing announced.
    assert db.record(job_id) == record
    assert db.log(job_id) == log
    assert db.counts() == {"PENDING": "1", "FAILED": "1"}
    assert db.events.of(job_id) == []


def test_a_waiting_job_whose_record_expired_stops_waiting(
    db: AgentDb, rt: Runtime, backend_app: Celery
) -> None:
    job_id = uuid.uuid4().hex
    db.redis.zadd(KEY_JOBS_WAITING, {job_id: db.clock_ms() - 1_000})

    assert fail_waiting(rt, celery_app=backend_app) == []

    assert db.dump() == {}  # out of jobs:waiting, no result published, no record made


def test_a_sweep_that_finds_another_sweep_recorded_the_failure_publishes_it(
    db: AgentDb, rt: Runtime, backend_app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two sweeps overlap: the first recorded the failure and died before publishing; the
    second, which read the record while it was still parked, publishes it."""
    job_id = parked_past_its_deadline(db)
    parked = rt.jobs.get(job_id)
    assert parked is not None
    error = error_to_dict(InputTimeoutError(timeout_message(job_id)))
    first = rt.jobs.finish(
        job_id, epoch=1, status=JobStatus.FAILED, error=error, only_from=JobStatus.INPUT_REQUIRED
    )
    assert first.kind is FinishKind.RECORDED  # ... and that sweep died here
    monkeypatch.setattr(rt.jobs, "get", lambda _job_id: parked)  # read before the first's write

    assert fail_waiting(rt, celery_app=backend_app) == []
    expect_published_timeout(backend_app, job_id)
    assert not db.redis.zscore(KEY_JOBS_WAITING, job_id)
