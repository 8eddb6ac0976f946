"""One exception hierarchy for the whole system.

Every error takes a single human-readable message so that it survives Celery's
JSON result serialization and is raised again, as the same class, by
``AsyncResult.get()`` in the app. Messages never contain key material.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import ValidationError

if TYPE_CHECKING:  # the envelope module imports this one
    from project.core.a2a.envelope import Envelope


class AgentsError(Exception):
    """Root of every error this system raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigurationError(AgentsError):
    """Settings are missing or unsafe (for example a short A2A key)."""


# --- A2A envelopes -----------------------------------------------------------


class A2AError(AgentsError):
    """An envelope was refused. Refused envelopes never run."""

    reason = "a2a"


class MalformedEnvelopeError(A2AError):
    """Wrong types, missing fields, not JSON, or a payload over the size limit."""

    reason = "malformed"


class UnknownKeyError(A2AError):
    """The envelope names a key id that is not in the keyring."""

    reason = "unknown_key"


class SignatureError(A2AError):
    """The HMAC does not match the envelope's contents."""

    reason = "bad_signature"


class ExpiredEnvelopeError(A2AError):
    """The envelope is outside its validity window: expired, or signed in the future."""

    reason = "expired"


class LapsedEnvelopeError(ExpiredEnvelopeError):
    """An authentic envelope (signature and key checked) whose expiry has passed.

    ``envelope`` is the verified envelope: a tier may still act on it when the job's
    record shows it is the very message the job waits for (it expired in our own
    queue, behind a backlog), and must refuse it otherwise.
    """

    def __init__(self, message: str, envelope: Envelope | None = None) -> None:
        super().__init__(message)
        self.envelope = envelope  # None once it crossed a process (a result backend)


class ReplayError(A2AError):
    """The envelope was already processed to the end once."""

    reason = "replay"


class MisdirectedEnvelopeError(A2AError):
    """The envelope is addressed to another agent or has the wrong type for this task."""

    reason = "misdirected"


# --- Jobs --------------------------------------------------------------------


class JobError(AgentsError):
    """A job could not produce a result. Raised by ``AsyncResult.get()``."""


class InvalidJobError(JobError):
    """The job itself is malformed (bad priority, requirements, size)."""


class UnknownTaskTypeError(JobError):
    """No registered worker offers the job's task type."""


class InvalidPayloadError(JobError):
    """The handler refused the job's payload."""


class HandlerError(JobError):
    """The handler raised while running the job."""


class NoEligibleWorkerError(JobError):
    """No live worker could take the job before its deadline."""


class DeadlineExceededError(JobError):
    """The job outlived the deadline its submitter set (``deadline_s``)."""


class JobAbandonedError(JobError):
    """The job was given up after too many attempts (a poison job)."""


class JobCanceledError(JobError):
    """The job was canceled (``cancel_job``) before it produced a result."""


class InputTimeoutError(JobError):
    """An agent waited for input longer than its job's ``input_timeout_s``."""


class JobTimeLimitError(JobError):
    """A run took longer than its task type's time limit."""


class JobRejectedError(JobError):
    """The handler or agent refused the job (raise it with the reason)."""


class JobNotFoundError(JobError):
    """There is no job with this id (never submitted, or expired)."""


class JobNotWaitingError(JobError):
    """``resume_job`` on a job that is not waiting for input."""


# --- Shared state ------------------------------------------------------------


class StateError(AgentsError):
    """Base for shared-state failures."""


class ConflictError(StateError):
    """An optimistic write kept losing to concurrent writers; retries ran out."""


class LeaseError(StateError):
    """A lease is held by someone else, was lost, or its fencing token is stale."""


class StoreUnavailableError(StateError):
    """Redis could not be reached."""


class WriteRefusedError(StateError):
    """Redis refused a write: out of memory (``maxmemory``), a read-only replica, or
    unable to persist. Raised to an app whose submit could not be recorded."""


# --- Helpers -----------------------------------------------------------------


def job_error_class(name: str) -> type[JobError]:
    """The :class:`JobError` subclass called ``name``; an unknown name gives HandlerError."""
    pending: list[type[JobError]] = [JobError]
    while pending:
        cls = pending.pop()
        if cls.__name__ == name:
            return cls
        pending.extend(cls.__subclasses__())
    return HandlerError


def describe_validation_error(exc: ValidationError, *, whole: str = "value", limit: int = 5) -> str:
    """``loc: message`` for the first ``limit`` problems; ``whole`` names an error at the root."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or whole}: {e['msg']}" for e in exc.errors()[:limit]
    )


def invalid_fields(exc: ValidationError) -> str:
    """The sorted, comma-separated names of the fields a ValidationError is about."""
    return ", ".join(sorted({".".join(str(p) for p in e["loc"]) for e in exc.errors()}))
