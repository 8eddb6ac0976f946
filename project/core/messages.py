"""Payloads of the envelopes the tiers send each other. Tiers share only these."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, JsonValue, ValidationError

from project.core.errors import MalformedEnvelopeError, invalid_fields
from project.core.models import JobStatus, Priority, Requirements


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


class WorkOrder(_Message):
    """distributor -> worker: run this job at this epoch (REQUEST)."""

    job_id: str
    epoch: int
    task_type: str
    payload: dict[str, JsonValue]


class WorkReport(_Message):
    """worker -> distributor: the job's outcome (RESPONSE, rides as the Celery callback)."""

    job_id: str
    epoch: int
    status: JobStatus
    result: JsonValue = None
    error: dict[str, str] | None = None
    worker_id: str
    duration_ms: float


class JobEvent(_Message):
    """distributor -> coordinator: a job reached a final status (EVENT)."""

    job_id: str
    epoch: int
    status: JobStatus
    worker_id: str = ""
