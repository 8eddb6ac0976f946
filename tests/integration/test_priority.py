"""Priorities are honoured on the Redis transport: urgent work overtakes low work."""

from __future__ import annotations

import time

import pytest

from project import submit_task
from project.core.runtime import get_runtime
from project.local.deployment import LocalDeployment

pytestmark = pytest.mark.integration


def test_urgent_jobs_overtake_low_ones_in_a_worker_queue(deployment: LocalDeployment) -> None:
    only_w1 = {"worker_ids": ["w1"]}
    # Occupy both of w1's pool processes so that the next jobs wait in its queue.
    blockers = [
        submit_task.delay("generic", {"echo": "block", "sleep_s": 4.0}, requirements=only_w1)
        for _ in range(2)
    ]
    jobs = get_runtime().jobs
    deadline = time.monotonic() + 30
    while not all(
        (rec := jobs.get(b.id)) is not None and rec.status == "IN_PROGRESS" for b in blockers
    ):
        assert time.monotonic() < deadline, "blockers did not start"
        time.sleep(0.05)
    low = [
        submit_task.delay("generic", {"echo": f"low{i}"}, priority="low", requirements=only_w1)
        for i in range(8)
    ]
    deadline = time.monotonic() + 30
    while not all((rec := jobs.get(x.id)) is not None and rec.status == "ASSIGNED" for x in low):
        assert time.monotonic() < deadline, "low jobs were not queued for w1"
        time.sleep(0.05)
    # Every low job now waits in w1's queue; the urgent ones are queued after them.
    urgent = [
        submit_task.delay("generic", {"echo": f"urg{i}"}, priority="urgent", requirements=only_w1)
        for i in range(8)
    ]
    for result in blockers + low + urgent:
        result.get(timeout=60)

    # Compare when w1 finished them (the timestamp of each job's RESPONSE).
    def finished(job_id: str) -> int:
        chain = jobs.chain(job_id)
        return next(link["timestamp_ms"] for link in chain if link["type"] == "RESPONSE")

    urgent_done = sorted(finished(u.id) for u in urgent)
    low_done = sorted(finished(x.id) for x in low)
    # Most urgent jobs finish before most low ones (a slot may already hold a low one).
    assert urgent_done[5] < low_done[2], (urgent_done, low_done)
