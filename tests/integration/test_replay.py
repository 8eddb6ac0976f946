"""The replay rule, expiry and key rotation against the session's real redis-server.

The rule: a copy of a message whose job is already final is a replay and is refused;
a copy of a message whose job is unfinished is a genuine redelivery and runs, while
the epoch compare-and-set keeps the job to one result. The job record each hop moves
anyway decides, so no per-message marker is read or written.
"""

from __future__ import annotations

import pytest
from redis import Redis
from support.envelopes import bare_envelope

from project.core.a2a.envelope import Envelope, Keyring, MessageType, Signer, now_ms, verify
from project.core.errors import ExpiredEnvelopeError, ReplayError, UnknownKeyError
from project.core.models import JobSpec, JobStatus
from project.core.runtime import replay_of
from project.core.state.jobs import AssignKind, FinishKind, JobStore, StartKind

pytestmark = pytest.mark.integration

SECRET_NEW = "replay-test-new-" + "n" * 32
SECRET_OLD = "replay-test-old-" + "o" * 32
KEYRING = Keyring.parse(f"r-new:{SECRET_NEW},r-old:{SECRET_OLD}")
SIGNER = Signer(KEYRING, ttl_s=120)
MAX_BYTES = 65_536


class Job:
    """One job driven through the store's scripts, with the envelopes of each hop."""

    def __init__(self, redis: Redis, job_id: str) -> None:
        self.jobs = JobStore(redis, result_ttl_s=60)
        self.id = job_id
        assert self.jobs.create(job_id, JobSpec(task_type="compute", payload={}), deadline_ms=0)
        self.dispatch = SIGNER.request(sender="coordinator", recipient="distributor", payload={})
        self.order = SIGNER.reply(self.dispatch, MessageType.REQUEST, {}, sender="distributor")
        self.response = SIGNER.reply(self.order, MessageType.RESPONSE, {}, sender="w1")
        self.epoch = 0

    def assign(self) -> AssignKind:
        outcome = self.jobs.assign(
            self.id, expected_epoch=0, worker_id="w1", max_attempts=3, dispatch=self.dispatch
        )
        self.epoch = outcome.epoch or self.epoch
        return outcome.kind

    def start(self) -> StartKind:
        return self.jobs.start(
            self.id, epoch=self.epoch, worker_id="w1", request=self.order, max_runs=3
        )

    def finish(self, result: int, epoch: int | None = None) -> tuple[FinishKind, object]:
        outcome = self.jobs.finish(
            self.id,
            epoch=self.epoch if epoch is None else epoch,
            status=JobStatus.COMPLETED,
            result=result,
            cause=self.response,
        )
        return outcome.kind, outcome.result


def test_copies_of_an_unfinished_job_s_messages_run_again(redis_client: Redis) -> None:
    job = Job(redis_client, "replay-unfinished")
    assert job.assign() is AssignKind.OK
    # The distributor died after recording the assignment: the same REQUEST comes back.
    assert job.assign() is AssignKind.REDO
    assert job.start() is StartKind.RUN
    # The worker died mid-run: Celery redelivers the same work order, and it runs again.
    assert job.start() is StartKind.RERUN
    record = job.jobs.get(job.id)
    assert record is not None and record.status is JobStatus.IN_PROGRESS


def test_copies_of_a_final_job_s_messages_are_replays(redis_client: Redis) -> None:
    job = Job(redis_client, "replay-final")
    job.assign()
    job.start()
    assert job.finish(1) == (FinishKind.RECORDED, None)
    assert job.assign() is AssignKind.FINAL
    assert job.start() is StartKind.FINAL
    # A copy of the RESPONSE, even with another result, gets the first result back.
    assert job.finish(2) == (FinishKind.ALREADY, 1)
    record = job.jobs.get(job.id)
    assert record is not None and (record.status, record.result) == (JobStatus.COMPLETED, 1)


def test_a_stale_completion_changes_nothing_and_a_redelivery_still_records(
    redis_client: Redis,
) -> None:
    job = Job(redis_client, "replay-stale")
    job.assign()
    job.start()
    assert job.finish(1, epoch=job.epoch + 5)[0] is FinishKind.STALE
    record = job.jobs.get(job.id)
    assert record is not None and record.status is JobStatus.IN_PROGRESS
    assert job.finish(1) == (FinishKind.RECORDED, None)


def test_replay_error_names_the_message_and_the_job(redis_client: Redis) -> None:
    envelope = SIGNER.request(sender="distributor", recipient="w1", payload={})
    error = replay_of(envelope, "job-7", "COMPLETED")
    assert isinstance(error, ReplayError) and error.reason == "replay"
    assert envelope.id in str(error) and "job-7" in str(error) and "COMPLETED" in str(error)


def test_an_expired_envelope_is_refused_before_redis(redis_client: Redis) -> None:
    expired = bare_envelope(
        SIGNER, MessageType.REQUEST, sender="distributor", recipient="w1", ttl_ms=-1
    )
    with pytest.raises(ExpiredEnvelopeError):
        verify(expired.to_wire(), KEYRING, max_bytes=MAX_BYTES)


def make_request(keyring: Keyring) -> Envelope:
    return Signer(keyring, ttl_s=120).request(sender="d", recipient="w1", payload={"n": now_ms()})


def test_key_rotation() -> None:
    old_key_only = Keyring.parse(f"r-old:{SECRET_OLD}")
    rotated = Keyring.parse(f"r-new:{SECRET_NEW}")
    in_flight = make_request(old_key_only)  # signed before the rotation began
    assert in_flight.key_id == "r-old"
    # During the overlap [new, old] it verifies.
    assert verify(in_flight.to_wire(), KEYRING, max_bytes=MAX_BYTES) == in_flight
    # After the rotation completes, the old key is unknown.
    with pytest.raises(UnknownKeyError):
        verify(make_request(old_key_only).to_wire(), rotated, max_bytes=MAX_BYTES)
    fresh = make_request(KEYRING)
    assert fresh.key_id == "r-new"
    assert verify(fresh.to_wire(), rotated, max_bytes=MAX_BYTES) == fresh
