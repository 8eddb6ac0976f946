"""Replay protection, expiry and key rotation against the session's real redis-server."""

from __future__ import annotations

import pytest
from redis import Redis

from project.core.a2a.envelope import Envelope, Keyring, MessageType, Signer, now_ms, verify
from project.core.a2a.replay import CLOCK_SKEW_MS, ReplayGuard, marker_ttl_ms, seen_key
from project.core.errors import ExpiredEnvelopeError, ReplayError, UnknownKeyError
from project.core.models import JobSpec, JobStatus
from project.core.state.jobs import JobStore

pytestmark = pytest.mark.integration

SECRET_NEW = "replay-test-new-" + "n" * 32
SECRET_OLD = "replay-test-old-" + "o" * 32
KEYRING = Keyring.parse(f"r-new:{SECRET_NEW},r-old:{SECRET_OLD}")
MAX_BYTES = 65_536
TTL_S = 120


def make_request(keyring: Keyring = KEYRING, ttl_s: float = TTL_S) -> Envelope:
    signer = Signer(keyring, ttl_s=ttl_s)
    return signer.request(sender="distributor", recipient="worker.w1", payload={"job": "j"})


def receive(guard: ReplayGuard, raw: object, keyring: Keyring = KEYRING) -> Envelope:
    """What every task does before it acts: verify, then claim."""
    envelope = verify(raw, keyring, max_bytes=MAX_BYTES)
    guard.claim(envelope)
    return envelope


def test_claim_writes_nothing_until_finish(redis_client: Redis) -> None:
    guard = ReplayGuard(redis_client)
    envelope = make_request()
    assert redis_client.get(seen_key(envelope.id)) is None
    assert receive(guard, envelope.to_wire()) == envelope
    assert redis_client.get(seen_key(envelope.id)) is None
    guard.finish(envelope)
    assert redis_client.get(seen_key(envelope.id)) == "done"


def test_redelivery_of_an_unfinished_message_is_accepted(redis_client: Redis) -> None:
    guard = ReplayGuard(redis_client)
    envelope = make_request()
    wire = envelope.to_wire()
    receive(guard, wire)
    # The worker died mid-way; Celery redelivers the very same body, maybe more than once.
    assert receive(guard, wire) == envelope
    assert receive(guard, dict(wire)) == envelope
    assert redis_client.get(seen_key(envelope.id)) is None


def test_claim_after_finish_is_a_replay(redis_client: Redis) -> None:
    guard = ReplayGuard(redis_client)
    envelope = make_request()
    wire = envelope.to_wire()
    receive(guard, wire)
    guard.finish(envelope)
    assert redis_client.get(seen_key(envelope.id)) == "done"
    with pytest.raises(ReplayError, match=envelope.id):
        receive(guard, wire)
    # A refused replay leaves the marker as it was.
    assert redis_client.get(seen_key(envelope.id)) == "done"


def test_finish_without_claim_still_refuses_later_copies(redis_client: Redis) -> None:
    guard = ReplayGuard(redis_client)
    envelope = make_request()
    guard.finish(envelope)
    with pytest.raises(ReplayError):
        guard.claim(envelope)


def test_markers_are_per_envelope(redis_client: Redis) -> None:
    guard = ReplayGuard(redis_client)
    first, second = make_request(), make_request()
    receive(guard, first.to_wire())
    guard.finish(first)
    assert receive(guard, second.to_wire()) == second
    with pytest.raises(ReplayError):
        guard.claim(first)


def test_marker_ttl_is_remaining_lifetime_plus_skew(redis_client: Redis) -> None:
    guard = ReplayGuard(redis_client)
    envelope = make_request(ttl_s=TTL_S)
    expected_ms = envelope.expires_at_ms - now_ms() + CLOCK_SKEW_MS
    guard.claim(envelope)
    guard.finish(envelope)
    done_ttl = redis_client.pttl(seen_key(envelope.id))
    assert expected_ms - 5_000 <= done_ttl <= expected_ms
    assert done_ttl > TTL_S * 1000  # lives past the envelope's own expiry
    assert marker_ttl_ms(envelope) <= expected_ms


def test_marker_ttl_has_a_floor_for_long_expired_envelopes() -> None:
    old = Signer(KEYRING, ttl_s=TTL_S).sign(
        MessageType.EVENT,
        sender="a",
        recipient="b",
        payload={},
        origin="a",
        request_id="r",
        parent_request_id=None,
        ttl_ms=-(CLOCK_SKEW_MS * 2),
    )
    assert marker_ttl_ms(old) == 1_000


def test_done_marker_from_job_store_finish_refuses_replays(redis_client: Redis) -> None:
    guard = ReplayGuard(redis_client)
    jobs = JobStore(redis_client, result_ttl_s=60)
    signer = Signer(KEYRING, ttl_s=TTL_S)
    job_id = "job-replay-1"
    assert jobs.create(job_id, JobSpec(task_type="compute", payload={}), deadline_ms=now_ms() + 1)
    dispatch = signer.request(sender="coordinator", recipient="distributor", payload={})
    assigned = jobs.assign(
        job_id, expected_epoch=0, worker_id="w1", max_attempts=3, dispatch=dispatch
    )
    assert assigned.kind == "ok"
    request = signer.request(
        sender="distributor", recipient="worker.w1", payload={}, parent=dispatch
    )
    guard.claim(request)
    response = signer.reply(request, MessageType.RESPONSE, {"result": 1}, sender="worker.w1")
    guard.claim(response)

    outcome = jobs.finish(
        job_id,
        epoch=assigned.epoch,
        status=JobStatus.COMPLETED,
        result=1,
        cause=response,
        done_ids=(response.id, request.id),
    )
    assert outcome.kind == "recorded"
    for envelope in (request, response):
        assert redis_client.get(seen_key(envelope.id)) == "done"
        assert redis_client.pttl(seen_key(envelope.id)) > TTL_S * 1000
        with pytest.raises(ReplayError):
            receive(guard, envelope.to_wire())
    # The dispatch envelope was not named in done_ids: it is not marked.
    assert redis_client.get(seen_key(dispatch.id)) is None


def test_stale_completion_marks_nothing_done(redis_client: Redis) -> None:
    guard = ReplayGuard(redis_client)
    jobs = JobStore(redis_client, result_ttl_s=60)
    signer = Signer(KEYRING, ttl_s=TTL_S)
    job_id = "job-replay-2"
    assert jobs.create(job_id, JobSpec(task_type="compute", payload={}), deadline_ms=now_ms() + 1)
    response = signer.request(sender="worker.w1", recipient="distributor", payload={})
    guard.claim(response)
    outcome = jobs.finish(
        job_id,
        epoch=7,
        status=JobStatus.COMPLETED,
        cause=response,
        done_ids=(response.id,),
    )
    assert outcome.kind == "stale"
    # Nothing was recorded, so processing did not finish: a redelivery still runs.
    assert redis_client.get(seen_key(response.id)) is None
    assert receive(guard, response.to_wire()) == response


def test_expired_envelope_is_refused_before_any_marker(redis_client: Redis) -> None:
    guard = ReplayGuard(redis_client)
    signer = Signer(KEYRING, ttl_s=TTL_S)
    expired = signer.sign(
        MessageType.REQUEST,
        sender="distributor",
        recipient="worker.w1",
        payload={},
        origin="distributor",
        request_id="r",
        parent_request_id=None,
        ttl_ms=-1,
    )
    with pytest.raises(ExpiredEnvelopeError):
        receive(guard, expired.to_wire())
    assert redis_client.exists(seen_key(expired.id)) == 0
    # Even after a finish, an expired copy is refused as expired, not replayed.
    guard.finish(expired)
    with pytest.raises(ExpiredEnvelopeError):
        receive(guard, expired.to_wire())


def test_key_rotation_with_replay_protection(redis_client: Redis) -> None:
    guard = ReplayGuard(redis_client)
    old_key_only = Keyring.parse(f"r-old:{SECRET_OLD}")
    rotated = Keyring.parse(f"r-new:{SECRET_NEW}")
    in_flight = make_request(old_key_only)  # signed before the rotation began
    assert in_flight.key_id == "r-old"

    # During the overlap [new, old] it is accepted once, then is a replay.
    assert receive(guard, in_flight.to_wire(), KEYRING) == in_flight
    guard.finish(in_flight)
    with pytest.raises(ReplayError):
        receive(guard, in_flight.to_wire(), KEYRING)

    # After the rotation completes, the old key is unknown: refused before Redis.
    fresh_old = make_request(old_key_only)
    with pytest.raises(UnknownKeyError):
        receive(guard, fresh_old.to_wire(), rotated)
    assert redis_client.exists(seen_key(fresh_old.id)) == 0
    new_envelope = make_request(KEYRING)
    assert new_envelope.key_id == "r-new"
    assert receive(guard, new_envelope.to_wire(), rotated) == new_envelope


def test_a_chain_link_is_appended_once_per_envelope(redis_client: Redis) -> None:
    # A dying Redis may run an append and never reply; the client then sends it again,
    # and a redelivered EVENT appends the same envelope again: neither may add a link.
    jobs = JobStore(redis_client, result_ttl_s=60)
    event, other = make_request(), make_request()
    assert jobs.append_chain("j-chain", event)
    assert not jobs.append_chain("j-chain", event)
    assert jobs.append_chain("j-chain", other)
    assert [link["id"] for link in jobs.chain("j-chain")] == [event.id, other.id]
