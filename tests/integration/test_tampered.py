"""Envelopes put straight on a tier's queue, bypassing the tiers before it.

The target is a real job record, ASSIGNED to w1 at epoch 1: a work order that got
through verification would start it (status IN_PROGRESS, ``handler_executions``
+1). A control test shows that a correctly signed order does exactly that; every
other test sends something forged and checks that it is refused with its typed
error, counted by reason in ``stats:a2a:refused``, that nothing ran or changed,
and that the worker still serves jobs afterwards.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from celery import signature
from celery.result import AsyncResult
from support.polling import wait_for

import project
from project import submit_task
from project.coordinator.view import genuine_event_check
from project.core.a2a.envelope import Envelope, Keyring, MessageType, Signer, now_ms
from project.core.constants import (
    CHANNEL_JOBS,
    COORDINATOR,
    DISTRIBUTOR,
    DISTRIBUTOR_QUEUE,
    KEY_STATS_REFUSED,
    TASK_ASSIGN,
    TASK_COMPLETE,
    TASK_EXECUTE,
    worker_queue,
)
from project.core.errors import (
    A2AError,
    LapsedEnvelopeError,
    MalformedEnvelopeError,
    MisdirectedEnvelopeError,
    ReplayError,
    SignatureError,
    UnknownKeyError,
)
from project.core.messages import DispatchRequest, JobEvent, WorkOrder, WorkReport
from project.core.models import JobRecord, JobSpec, JobStatus, Priority, Requirements
from project.core.runtime import get_runtime
from project.local.deployment import LocalDeployment

pytestmark = pytest.mark.integration

WORKER = "w1"
PAYLOAD = {"operation": "sum", "values": [1, 2, 3]}
GET_TIMEOUT_S = 30


@dataclass(frozen=True)
class Target:
    """A job ASSIGNED to w1 at epoch 1, and the dispatch envelope that assigned it."""

    job_id: str
    dispatch: Envelope


@dataclass(frozen=True)
class Snapshot:
    record: JobRecord | None
    handler_executions: int
    refused: dict[str, int]


def snapshot(target: Target) -> Snapshot:
    rt = get_runtime()
    refused: dict[str, str] = rt.redis.hgetall(KEY_STATS_REFUSED)  # type: ignore[assignment]
    return Snapshot(
        record=rt.jobs.get(target.job_id),
        handler_executions=rt.jobs.stats().get("handler_executions", 0),
        refused={reason: int(n) for reason, n in refused.items()},
    )


@pytest.fixture
def target(deployment: LocalDeployment) -> Iterator[Target]:
    rt = get_runtime()
    job_id = f"tampered-{uuid.uuid4().hex}"
    spec = JobSpec(task_type="compute", payload=PAYLOAD)
    assert rt.jobs.create(job_id, spec, deadline_ms=now_ms() + 600_000)
    dispatch = rt.signer.request(
        sender=COORDINATOR, recipient=DISTRIBUTOR, payload={"job_id": job_id}, request_id=job_id
    )
    outcome = rt.jobs.assign(
        job_id, expected_epoch=0, worker_id=WORKER, max_attempts=3, dispatch=dispatch
    )
    assert (outcome.kind, outcome.epoch) == ("ok", 1)
    yield Target(job_id, dispatch)
    record = rt.jobs.get(job_id)
    if record is not None and not record.status.is_final:  # leave no open job behind
        # With its signed EVENT, as the distributor does: the coordinator's view would
        # count a final announcement without one as refused, during the next test.
        event = JobEvent(job_id=job_id, epoch=record.epoch, status=JobStatus.ABANDONED)
        signed = rt.signer.reply(
            dispatch,
            MessageType.EVENT,
            event.model_dump(mode="json"),
            sender=DISTRIBUTOR,
            recipient=COORDINATOR,
        )
        rt.jobs.finish(job_id, epoch=record.epoch, status=JobStatus.ABANDONED, event=signed)


def work_order(
    target: Target,
    *,
    signer: Signer | None = None,
    recipient: str = WORKER,
    type: MessageType = MessageType.REQUEST,
    payload: dict[str, Any] | None = None,
    ttl_ms: int | None = None,
) -> Envelope:
    """A work order for the target job, signed as the distributor would sign it."""
    order = WorkOrder(job_id=target.job_id, epoch=1, task_type="compute", payload=PAYLOAD)
    return (signer or get_runtime().signer).sign(
        type,
        sender=DISTRIBUTOR,
        recipient=recipient,
        payload=order.model_dump(mode="json") if payload is None else payload,
        origin=COORDINATOR,
        request_id=target.job_id,
        parent_request_id=target.dispatch.id,
        observed_sequence=target.dispatch.causal.sequence_number,
        ttl_ms=ttl_ms,
    )


def stale_expired_order(target: Target) -> Envelope:
    """An authentic work order an hour past its expiry, for an epoch the job is not at."""
    order = WorkOrder(job_id=target.job_id, epoch=2, task_type="compute", payload=PAYLOAD)
    return work_order(target, ttl_ms=-3_600_000, payload=order.model_dump(mode="json"))


def test_an_expired_order_the_job_waits_for_still_runs(
    deployment: LocalDeployment, target: Target
) -> None:
    """Expired in a queue, but the job's record waits for exactly this order: it runs."""
    before = snapshot(target)
    send_to_worker(work_order(target, ttl_ms=-3_600_000).to_wire())
    wait_for(
        lambda: snapshot(target).handler_executions == before.handler_executions + 1,
        GET_TIMEOUT_S,
        "w1 to run the expired order its job waits for",
    )
    after = snapshot(target)
    assert after.record is not None and after.record.status is JobStatus.IN_PROGRESS
    assert after.record.epoch == 1 and after.record.attempts == before.record.attempts  # type: ignore[union-attr]
    assert after.refused == before.refused  # nothing refused


def send_to_worker(raw: Any, **options: Any) -> AsyncResult:
    return project.app.send_task(TASK_EXECUTE, args=[raw], queue=worker_queue(WORKER), **options)


def with_result_callback() -> dict[str, Any]:
    """What the distributor attaches: the worker's RESPONSE goes on to ``complete``."""
    return {"link": signature(TASK_COMPLETE, queue=DISTRIBUTOR_QUEUE, app=project.app)}


def other_key_signer(key_id: str) -> Signer:
    return Signer(Keyring({key_id: b"an-attacker-key-that-is-long-enough!!"}), ttl_s=60)


def assert_worker_serves_jobs(deployment: LocalDeployment) -> None:
    assert deployment.processes[WORKER].poll() is None, f"{WORKER} exited"
    result = submit_task.delay(
        "compute", {"operation": "sum", "values": [20, 22]}, requirements={"worker_ids": [WORKER]}
    )
    assert result.get(timeout=GET_TIMEOUT_S)["result"] == 42


def assert_refused_and_nothing_ran(
    before: Snapshot, after: Snapshot, error: type[A2AError]
) -> None:
    assert after.record == before.record  # not even updated_ms moved
    assert before.record is not None and before.record.status is JobStatus.ASSIGNED
    assert after.handler_executions == before.handler_executions
    expected = dict(before.refused)
    expected[error.reason] = expected.get(error.reason, 0) + 1
    assert after.refused == expected


# --- the control: a correctly signed order runs ------------------------------------


def test_a_valid_order_put_on_the_queue_runs(deployment: LocalDeployment, target: Target) -> None:
    before = snapshot(target)
    send_to_worker(work_order(target).to_wire(), **with_result_callback())
    assert AsyncResult(target.job_id, app=project.app).get(timeout=GET_TIMEOUT_S) == {
        "operation": "sum",
        "result": 6,
    }
    after = snapshot(target)
    assert after.handler_executions == before.handler_executions + 1
    assert after.record is not None and after.record.status is JobStatus.COMPLETED
    assert after.record.assignee == WORKER and after.record.result == {
        "operation": "sum",
        "result": 6,
    }
    assert after.refused == before.refused


# --- forged work orders ----------------------------------------------------------


def payload_changed(target: Target) -> Any:
    wire = work_order(target).to_wire()
    wire["payload"]["payload"]["values"] = [1000, 2000]
    return wire


def epoch_changed(target: Target) -> Any:
    wire = work_order(target).to_wire()
    wire["payload"]["epoch"] = 2
    return wire


def readdressed(target: Target) -> Any:
    wire = work_order(target, recipient="w2").to_wire()
    wire["recipient"] = WORKER
    return wire


def expiry_extended(target: Target) -> Any:
    wire = work_order(target, ttl_ms=-1_000).to_wire()
    wire["expires_at_ms"] += 3_600_000
    return wire


def signature_stripped(target: Target) -> Any:
    wire = work_order(target).to_wire()
    del wire["signature"]
    return wire


TAMPERED: dict[str, tuple[Callable[[Target], Any], type[A2AError]]] = {
    "payload changed after signing": (payload_changed, SignatureError),
    "epoch changed after signing": (epoch_changed, SignatureError),
    "recipient changed after signing": (readdressed, SignatureError),
    "expiry extended after signing": (expiry_extended, SignatureError),
    "signed with a wrong secret for the active key id": (
        lambda t: work_order(t, signer=other_key_signer(get_runtime().keyring.active_key_id)),
        SignatureError,
    ),
    "signed with an unknown key id": (
        lambda t: work_order(t, signer=other_key_signer("rogue")),
        UnknownKeyError,
    ),
    # An hour past its expiry, and for an epoch the job is not at: an expired envelope
    # goes on only if it is the very message its job waits for (hops.readmit).
    "expired": (lambda t: stale_expired_order(t), LapsedEnvelopeError),
    "addressed to another worker": (
        lambda t: work_order(t, recipient="w2"),
        MisdirectedEnvelopeError,
    ),
    "a RESPONSE, not a REQUEST": (
        lambda t: work_order(t, type=MessageType.RESPONSE),
        MisdirectedEnvelopeError,
    ),
    "signed, but not a work order": (
        lambda t: work_order(t, payload={"job_id": t.job_id, "run": "anything"}),
        MalformedEnvelopeError,
    ),
    "signature missing": (signature_stripped, MalformedEnvelopeError),
    "a string": (lambda t: "not an envelope", MalformedEnvelopeError),
    "a list": (lambda t: [work_order(t).to_wire()], MalformedEnvelopeError),
    "a number": (lambda t: 42, MalformedEnvelopeError),
    "null": (lambda t: None, MalformedEnvelopeError),
}


@pytest.mark.parametrize("case", list(TAMPERED))
def test_a_forged_work_order_is_refused_and_never_runs(
    deployment: LocalDeployment, target: Target, case: str
) -> None:
    forge, error = TAMPERED[case]
    raw = forge(target)
    if isinstance(raw, Envelope):
        raw = raw.to_wire()
    before = snapshot(target)
    result = send_to_worker(raw, **with_result_callback())
    with pytest.raises(A2AError) as info:
        result.get(timeout=GET_TIMEOUT_S)
    assert type(info.value) is error, info.value
    assert_refused_and_nothing_ran(before, snapshot(target), error)
    assert not AsyncResult(target.job_id, app=project.app).ready()
    assert_worker_serves_jobs(deployment)


def test_a_replay_of_a_finished_order_is_refused(
    deployment: LocalDeployment, target: Target
) -> None:
    wire = work_order(target).to_wire()
    send_to_worker(wire, **with_result_callback())
    AsyncResult(target.job_id, app=project.app).get(timeout=GET_TIMEOUT_S)
    before = snapshot(target)
    assert before.record is not None and before.record.status is JobStatus.COMPLETED
    with pytest.raises(ReplayError):
        send_to_worker(wire, **with_result_callback()).get(timeout=GET_TIMEOUT_S)
    after = snapshot(target)
    assert after.record == before.record
    assert after.handler_executions == before.handler_executions
    assert after.refused.get("replay", 0) == before.refused.get("replay", 0) + 1
    assert_worker_serves_jobs(deployment)


# --- pickle -------------------------------------------------------------------------


def count_in_log(deployment: LocalDeployment, text: str) -> int:
    path = deployment.log_dir / f"{WORKER}.log"
    return path.read_text(errors="replace").count(text) if path.exists() else 0


def test_a_pickled_message_is_refused_by_content_type(
    deployment: LocalDeployment, target: Target
) -> None:
    marker = "untrusted content of type pickle"
    refusals = count_in_log(deployment, marker)
    before = snapshot(target)
    wire = work_order(target).to_wire()  # a valid order: only the serializer is wrong
    send_to_worker(wire, serializer="pickle", **with_result_callback())
    deadline = time.monotonic() + GET_TIMEOUT_S
    while count_in_log(deployment, marker) == refusals:
        assert time.monotonic() < deadline, f"{WORKER}'s log never showed the refusal"
        time.sleep(0.1)
    after = snapshot(target)
    assert after.record == before.record
    assert after.handler_executions == before.handler_executions
    assert_worker_serves_jobs(deployment)
    # The very same order as JSON runs: the content type was all that stopped it.
    executions = snapshot(target).handler_executions
    send_to_worker(wire, **with_result_callback())
    result = AsyncResult(target.job_id, app=project.app).get(timeout=GET_TIMEOUT_S)
    assert result["result"] == 6
    assert snapshot(target).handler_executions == executions + 1


# --- the other tiers refuse forgeries too -----------------------------------------------


def forged_in_chain(
    target: Target,
    key_id: str,
    message_type: MessageType,
    route: tuple[str, str],
    payload: dict[str, Any],
) -> Envelope:
    """An envelope in ``target``'s chain, signed by a key of id ``key_id`` the deployment lacks.

    Args:
        target: The job whose chain the envelope continues (its dispatch is the parent).
        key_id: The key id the forger claims.
        message_type: The envelope's type.
        route: Sender and recipient.
        payload: The envelope's payload.
    """
    sender, recipient = route
    return other_key_signer(key_id).sign(
        message_type,
        sender=sender,
        recipient=recipient,
        payload=payload,
        origin=COORDINATOR,
        request_id=target.job_id,
        parent_request_id=target.dispatch.id,
    )


def forged_completion(target: Target) -> Envelope:
    report = WorkReport(
        job_id=target.job_id,
        epoch=1,
        status=JobStatus.COMPLETED,
        result={"operation": "sum", "result": 999},
        worker_id=WORKER,
        duration_ms=1.0,
    )
    return forged_in_chain(
        target,
        get_runtime().keyring.active_key_id,
        MessageType.RESPONSE,
        (WORKER, DISTRIBUTOR),
        report.model_dump(mode="json"),
    )


def tampered_dispatch(target: Target) -> Any:
    request = DispatchRequest(
        job_id=target.job_id,
        task_type="compute",
        payload=PAYLOAD,
        priority=Priority.NORMAL,
        requirements=Requirements(),
        deadline_ms=now_ms() + 60_000,
        expected_epoch=1,
        reason="reroute",
    )
    wire = (
        get_runtime()
        .signer.request(
            sender=COORDINATOR,
            recipient=DISTRIBUTOR,
            payload=request.model_dump(mode="json"),
            request_id=target.job_id,
        )
        .to_wire()
    )
    wire["payload"]["requirements"]["worker_ids"] = ["w2"]
    return wire


def forged_event(target: Target) -> Envelope:
    event = JobEvent(job_id=target.job_id, epoch=1, status=JobStatus.COMPLETED, worker_id=WORKER)
    return forged_in_chain(
        target,
        "rogue",
        MessageType.EVENT,
        (DISTRIBUTOR, COORDINATOR),
        event.model_dump(mode="json"),
    )


OTHER_TIERS: dict[str, tuple[str, Callable[[Target], Any], type[A2AError]]] = {
    "distributor.complete: a forged result": (TASK_COMPLETE, forged_completion, SignatureError),
    "distributor.assign: a re-route to another worker": (
        TASK_ASSIGN,
        tampered_dispatch,
        SignatureError,
    ),
}


@pytest.mark.parametrize("case", list(OTHER_TIERS))
def test_other_tiers_refuse_forged_envelopes(
    deployment: LocalDeployment, target: Target, case: str
) -> None:
    task_name, forge, error = OTHER_TIERS[case]
    raw = forge(target)
    if isinstance(raw, Envelope):
        raw = raw.to_wire()
    before = snapshot(target)
    chain_before = get_runtime().jobs.chain(target.job_id)
    with pytest.raises(A2AError) as info:
        project.app.send_task(task_name, args=[raw]).get(timeout=GET_TIMEOUT_S)
    assert type(info.value) is error, info.value
    assert_refused_and_nothing_ran(before, snapshot(target), error)
    assert get_runtime().jobs.chain(target.job_id) == chain_before
    assert not AsyncResult(target.job_id, app=project.app).ready()  # no forged result
    assert_worker_serves_jobs(deployment)


@pytest.mark.parametrize(
    ("case", "reason"),
    [("forged", UnknownKeyError.reason), ("missing", MalformedEnvelopeError.reason)],
)
def test_the_coordinator_view_refuses_unsigned_or_forged_final_announcements(
    deployment: LocalDeployment, target: Target, case: str, reason: str
) -> None:
    """The final EVENT rides pub/sub: a forged or missing one is refused and counted."""
    rt = get_runtime()
    event = json.dumps(forged_event(target).to_wire()) if case == "forged" else ""
    before = snapshot(target).refused.get(reason, 0)
    announcement = {
        "job_id": target.job_id,
        "status": "COMPLETED",
        "epoch": 1,
        "assignee": WORKER,
        "event": event,
    }
    rt.redis.publish(CHANNEL_JOBS, json.dumps(announcement))
    wait_for(
        lambda: snapshot(target).refused.get(reason, 0) > before,
        GET_TIMEOUT_S,
        f"the coordinator's view to refuse a {case} EVENT",
    )
    record = rt.jobs.get(target.job_id)
    assert record is not None and record.status is JobStatus.ASSIGNED  # nothing changed
    assert deployment.processes["coordinator"].poll() is None  # the coordinator lives on


def test_the_view_believes_an_unsigned_cancel_only_when_the_record_agrees(
    deployment: LocalDeployment, target: Target
) -> None:
    """A cancel (from an app, which holds no keys) is announced without an EVENT: the
    view checks the record. A bare "CANCELED" for a job that is not is refused."""
    rt = get_runtime()
    reason = MalformedEnvelopeError.reason
    before = snapshot(target).refused.get(reason, 0)
    fake = {"job_id": target.job_id, "status": "CANCELED", "epoch": 1, "event": ""}
    rt.redis.publish(CHANNEL_JOBS, json.dumps(fake))
    wait_for(
        lambda: snapshot(target).refused.get(reason, 0) > before,
        GET_TIMEOUT_S,
        "the coordinator's view to refuse an unsigned CANCELED the record denies",
    )
    check = genuine_event_check(rt)
    assert not check(target.job_id, "CANCELED", "")  # the record says ASSIGNED
    assert project.cancel_job(target.job_id).canceled  # the real thing, announced unsigned
    assert check(target.job_id, "CANCELED", "")
    assert not check(target.job_id, "COMPLETED", "")  # only cancels and timeouts go unsigned
