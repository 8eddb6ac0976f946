"""A backlog older than the envelope lifetime: its jobs still run, once, at no attempt's cost.

The distributor is paused (SIGSTOP) while jobs queue up for longer than
``AGENTS_ENVELOPE_TTL_S``, so every REQUEST in its queue expires there. When it
resumes, each job still runs: the expired envelope is the one its job waits for.
A job whose submitter set a deadline that passed meanwhile fails with
DeadlineExceededError naming it, and an old copy of a finished job's message stays
refused.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from conftest import redis_url
from support.deployments import deployment_on
from support.polling import wait_for

from project.client import submit_many
from project.core.a2a.envelope import MessageType
from project.core.celery_app.config import celery_config
from project.core.constants import COORDINATOR, DISTRIBUTOR, KEY_STATS_JOBS, TASK_ASSIGN
from project.core.errors import DeadlineExceededError, ExpiredEnvelopeError
from project.core.messages import DispatchRequest
from project.core.models import JobStatus, Priority, Requirements
from project.core.runtime import Runtime
from project.core.settings import Settings
from project.core.state.connections import connect_redis
from project.core.state.jobs import JobStore
from project.local.deployment import LocalDeployment
from project.local.embedded_redis import EmbeddedRedis

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

DB = 3
TTL_S = 2.0
JOBS = 12


@pytest.fixture(scope="module")
def cluster(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalDeployment]:
    with deployment_on(
        DB,
        tmp_path_factory.mktemp("backlog"),
        AGENTS_ENVELOPE_TTL_S=str(TTL_S),
        AGENTS_ENVELOPE_CLOCK_SKEW_S="0",
        AGENTS_ASSIGN_DEADLINE_S="120",
    ) as deployment:
        yield deployment


def client() -> tuple[Celery, JobStore, Runtime]:
    settings = Settings(redis_url=redis_url(DB))
    app = Celery("backlog-client", set_as_current=False)
    app.conf.update(celery_config(settings))
    runtime = Runtime(settings.model_copy(update={"envelope_ttl_s": TTL_S}))
    return app, JobStore(connect_redis(redis_url(DB)), result_ttl_s=3600), runtime


def test_a_backlog_older_than_the_envelope_lifetime_still_runs_once(
    cluster: LocalDeployment, tmp_path: Path
) -> None:
    app, jobs, _ = client()
    stats = connect_redis(redis_url(DB))
    readmitted = int(stats.hget(KEY_STATS_JOBS, "expired_in_queue") or 0)
    cluster.signal("distributor1", signal.SIGSTOP)
    try:
        results = submit_many(
            [
                {"task_type": "compute", "payload": {"operation": "sum", "values": [i, 1]}}
                for i in range(JOBS)
            ],
            celery_app=app,
            store=jobs,
        )
        late = submit_many(
            [{"task_type": "generic", "payload": {"n": 1}, "deadline_s": 1.0}],
            celery_app=app,
            store=jobs,
        )[0]
        wait_for(
            lambda: all(jobs.get(r.id) is not None for r in [*results, late]),
            30,
            "the coordinator to record every job",
        )
        time.sleep(TTL_S * 2)  # the queued REQUESTs expire in the paused distributor's queue
    finally:
        cluster.signal("distributor1", signal.SIGCONT)

    assert [r.get(timeout=60)["result"] for r in results] == [i + 1 for i in range(JOBS)]
    for result in results:
        record = jobs.get(result.id)
        assert record is not None and record.status is JobStatus.COMPLETED
        assert record.attempts == 1, "an envelope that expired in our queue costs no attempt"
    with pytest.raises(DeadlineExceededError, match=r"deadline_s=1\b"):
        late.get(timeout=60)
    assert int(stats.hget(KEY_STATS_JOBS, "expired_in_queue") or 0) >= readmitted + JOBS


def test_an_expired_copy_of_a_finished_job_s_message_stays_refused(
    cluster: LocalDeployment,
) -> None:
    app, jobs, runtime = client()
    done = submit_many(
        [{"task_type": "compute", "payload": {"operation": "sum", "values": [2]}}],
        celery_app=app,
        store=jobs,
    )[0]
    assert done.get(timeout=60)["result"] == 2
    request = DispatchRequest(
        job_id=done.id,
        task_type="compute",
        payload={"operation": "sum", "values": [2]},
        priority=Priority.NORMAL,
        requirements=Requirements(),
        deadline_ms=0,
        expected_epoch=0,
    )
    old = runtime.signer.request(
        sender=COORDINATOR,
        recipient=DISTRIBUTOR,
        payload=request.model_dump(mode="json"),
        request_id=done.id,
    )
    assert old.type is MessageType.REQUEST
    time.sleep(TTL_S + 0.5)  # now it is both old and about a finished job
    with pytest.raises(ExpiredEnvelopeError):
        app.send_task(TASK_ASSIGN, args=[old.to_wire()]).get(timeout=30)
    record = jobs.get(done.id)
    assert record is not None and (record.status, record.attempts) == (JobStatus.COMPLETED, 1)
