"""Payloads of the envelopes the tiers send each other. Tiers share only these."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, JsonValue, ValidationError

from project.core.errors import MalformedEnvelopeError, invalid_fields
from project.core.models import JobRecord, JobStatus, Priority, Requirements


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Any:
        """Parse an envelope's payload.

        Raises:
            MalformedEnvelopeError: the payload is not this message.
        """
        try:
            return cls.model_validate(payload)
        except ValidationError as exc:
            raise MalformedEnvelopeError(
                f"{cls.__name__} payload is invalid: {invalid_fields(exc) or 'wrong type'}"
            ) from None


class DispatchReason(StrEnum):
    """Why a job is (re-)dispatched."""

    NEW = "new"
    """Just submitted."""
    REROUTE = "reroute"
    """Its worker died before finishing it."""
    STUCK = "stuck"
    """It was never dispatched (a lost message); the health check sends it again."""
    RESUME = "resume"
    """A person answered its agent's interrupt (``resume_job``)."""


class JobContext(_Message):
    """What a job carries besides its payload, for the code that runs it."""

    resume: dict[str, JsonValue] | None = None
    """Answers to a parked agent's interrupts, by interrupt id."""
    a2a_message: dict[str, JsonValue] | None = None
    """The A2A message that started or resumed the job (gateway jobs)."""
    owner: str | None = None
    """Who submitted it."""

    @classmethod
    def of(
        cls,
        resume: dict[str, JsonValue] | None,
        a2a_message: dict[str, JsonValue] | None,
        owner: str | None,
    ) -> JobContext | None:
        """The context, or None when there is none (most jobs: nothing extra on the wire)."""
        if resume is None and a2a_message is None and owner is None:
            return None
        return cls(resume=resume, a2a_message=a2a_message, owner=owner)


class SubmitRequest(_Message):
    """agent (e.g. the gateway) -> coordinator: take this job in (a signed submit)."""

    job_id: str
    """Must be the submit task's id (the id the caller's AsyncResult holds)."""
    job: dict[str, JsonValue]
    """The job spec, as ``submit_task``'s keyword arguments (validated at intake)."""


class ResumeRequest(_Message):
    """agent (e.g. the gateway) -> coordinator: send on this job it answered (signed)."""

    job_id: str
    answer: dict[str, JsonValue]
    """The answer by interrupt id, as ``resume_job`` recorded it."""


class DispatchRequest(_Message):
    """coordinator -> distributor: route this job (REQUEST)."""

    job_id: str
    task_type: str
    payload: dict[str, JsonValue]
    priority: Priority
    requirements: Requirements
    deadline_ms: int
    expected_epoch: int
    """The job's epoch when the request was made; routing moves it to epoch + 1."""
    reason: DispatchReason = DispatchReason.NEW
    """Why this dispatch was asked for."""
    context: JobContext | None = None

    @classmethod
    def for_record(
        cls, record: JobRecord, reason: DispatchReason, *, deadline_ms: int
    ) -> DispatchRequest:
        """A request to dispatch a recorded job again, at its current epoch."""
        return cls(
            job_id=record.id,
            task_type=record.task_type,
            payload=record.payload,
            priority=record.priority,
            requirements=record.requirements,
            deadline_ms=deadline_ms,
            expected_epoch=record.epoch,
            reason=reason,
            context=JobContext.of(record.resume, record.a2a_message, record.owner),
        )


class WorkOrder(_Message):
    """distributor -> worker: run this job at this epoch (REQUEST)."""

    job_id: str
    epoch: int
    task_type: str
    payload: dict[str, JsonValue]
    context: JobContext | None = None


class WorkReport(_Message):
    """worker -> distributor: the job's outcome (RESPONSE, rides as the Celery callback)."""

    job_id: str
    epoch: int
    status: JobStatus
    result: JsonValue = None
    error: dict[str, str] | None = None
    worker_id: str
    duration_ms: float
    interrupts: list[dict[str, JsonValue]] | None = None
    """For INPUT_REQUIRED: the agent's pending interrupts (``{"id", "value"}``)."""


class JobEvent(_Message):
    """distributor -> coordinator: a job reached a final status (EVENT)."""

    job_id: str
    epoch: int
    status: JobStatus
    worker_id: str = ""
