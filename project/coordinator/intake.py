"""The coordinator's hop: take a job in and hand it to the distributor tier.

The job spec is validated, its task type must be offered by some registered
worker, the PENDING record is created (which drops the app's submit intent), and
a signed REQUEST goes to the distributor. The job id is the Celery task id the
app holds; the distributor stores the final result under it later.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from pydantic import ValidationError

from project.core.a2a.envelope import Envelope, MessageType, now_ms
from project.core.celery_app import app
from project.core.constants import COORDINATOR, DISTRIBUTOR, KEY_INTENTS, TASK_ASSIGN
from project.core.errors import (
    InvalidJobError,
    LapsedEnvelopeError,
    MisdirectedEnvelopeError,
    UnknownTaskTypeError,
    describe_validation_error,
)
from project.core.hops import lapsed_envelope
from project.core.messages import (
    DispatchReason,
    DispatchRequest,
    JobContext,
    ResumeRequest,
    SubmitRequest,
)
from project.core.models import JobSpec, JobStatus
from project.core.runtime import Runtime


class Intake(StrEnum):
    """What taking a submit in did."""

    SENT = "sent"
    """The job was recorded PENDING (or found PENDING) and its REQUEST sent on."""
    ALREADY_SENT = "already_sent"
    """A redelivered submit of a job that is past PENDING: nothing to do."""


def take_in(
    rt: Runtime, raw_spec: Mapping[str, Any], job_id: str, *, parent: Envelope | None = None
) -> Intake:
    """Validate a submitted job, record it PENDING and send it to the distributor tier.

    Raises:
        InvalidJobError: the spec is malformed or its payload is too large.
        UnknownTaskTypeError: no registered worker offers the task type.
    """
    spec = validate_spec(rt, raw_spec)
    require_offered(rt, spec.task_type)
    deadline_ms = now_ms() + int((spec.deadline_s or rt.settings.assign_deadline_s) * 1000)
    if not rt.jobs.create(job_id, spec, deadline_ms=deadline_ms):
        record = rt.jobs.get(job_id)  # a redelivery of this submit: send it on only if unsent
        if record is None or record.status is not JobStatus.PENDING:
            return Intake.ALREADY_SENT
        deadline_ms = record.deadline_ms
    request = DispatchRequest(
        job_id=job_id,
        task_type=spec.task_type,
        payload=spec.payload,
        priority=spec.priority,
        requirements=spec.requirements,
        deadline_ms=deadline_ms,
        expected_epoch=0,
        reason=DispatchReason.NEW,
        context=JobContext.of(None, spec.a2a_message, spec.owner),
    )
    send_to_distributor(rt, request, parent=parent)
    rt.local_state.record({"job_id": job_id, "event": "submitted", "task_type": spec.task_type})
    return Intake.SENT


def signed_submit(rt: Runtime, raw: Any, job_id: str) -> tuple[dict[str, Any], Envelope]:
    """The job spec of a signed submit (an agent's, e.g. the gateway's) for ``job_id``.

    An authentic submit that expired in the coordinator's queue (a backlog) is still
    taken if its sender recorded the submit's intent and no record exists yet.

    Raises:
        A2AError: the envelope is refused, or (MisdirectedEnvelopeError) it is for
            another job id than the task's.
    """
    try:
        envelope = rt.receive(raw, expected=MessageType.REQUEST, recipient=COORDINATOR)
    except LapsedEnvelopeError as lapsed:
        envelope = lapsed_envelope(lapsed)
        if not rt.redis.hexists(KEY_INTENTS, job_id):
            raise
    request: SubmitRequest = SubmitRequest.from_payload(envelope.payload)
    if request.job_id != job_id:
        raise MisdirectedEnvelopeError(
            f"a signed submit for job {request.job_id} arrived as job {job_id}"
        )
    return dict(request.job), envelope


def send_resumed(rt: Runtime, job_id: str, signed: Any = None) -> bool:
    """Send a resumed job (PENDING, with the answer in its record) to the distributor.

    With ``signed`` (an agent's signed ResumeRequest), the answer it carries must be the
    one recorded, and it is the answer that travels on.

    Returns False if the job is no longer waiting to be sent (sent already, or final).

    Raises:
        A2AError: the signed request is refused, or does not match the record.
    """
    parent: Envelope | None = None
    answer: dict[str, Any] | None = None
    if signed is not None:
        parent = rt.receive(signed, expected=MessageType.REQUEST, recipient=COORDINATOR)
        resume: ResumeRequest = ResumeRequest.from_payload(parent.payload)
        job_id, answer = resume.job_id, dict(resume.answer)
    record = rt.jobs.get(job_id)
    if record is None or record.status is not JobStatus.PENDING or record.resume is None:
        return False
    if answer is not None and answer != record.resume:
        raise MisdirectedEnvelopeError(f"a signed resume of job {job_id} differs from its record")
    deadline_ms = now_ms() + int(rt.settings.assign_deadline_s * 1000)
    request = DispatchRequest.for_record(record, DispatchReason.RESUME, deadline_ms=deadline_ms)
    send_to_distributor(rt, request, parent=parent)
    rt.local_state.record({"job_id": job_id, "event": "resumed", "epoch": record.epoch})
    return True


def validate_spec(rt: Runtime, raw_spec: Mapping[str, Any]) -> JobSpec:
    """The job spec as a model, its payload within the size limit.

    Raises:
        InvalidJobError: the spec is malformed or its payload is too large.
    """
    try:
        spec = JobSpec.model_validate(raw_spec)
    except ValidationError as exc:
        raise InvalidJobError(f"invalid job: {describe_validation_error(exc)}") from None
    size = len(json.dumps(spec.payload, separators=(",", ":")))
    if size > rt.settings.max_payload_bytes:
        raise InvalidJobError(
            f"job payload is {size} bytes, over the limit of {rt.settings.max_payload_bytes}"
        )
    return spec


def require_offered(rt: Runtime, task_type: str) -> None:
    """Check that some registered worker offers ``task_type`` (the cache, then Redis).

    Raises:
        UnknownTaskTypeError: none does.
    """
    if task_type in rt.offered_task_types.get():
        return
    offered = rt.offered_task_types.get(fresh=True)
    if task_type not in offered:
        raise UnknownTaskTypeError(
            f"unknown task type {task_type!r}: no registered worker offers it "
            f"(offered: {', '.join(sorted(offered)) or 'none'})"
        )


def send_to_distributor(
    rt: Runtime, request: DispatchRequest, *, parent: Envelope | None = None
) -> None:
    """Sign a DispatchRequest and send it to the distributor tier."""
    envelope = rt.signer.request(
        sender=COORDINATOR,
        recipient=DISTRIBUTOR,
        payload=request.model_dump(mode="json"),
        request_id=request.job_id,
        parent=parent,
    )
    app.send_task(
        TASK_ASSIGN,
        args=[envelope.to_wire()],
        priority=request.priority.broker_priority,
        argsrepr=envelope.brief(),
    )
