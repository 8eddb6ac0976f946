"""The worker's hop: verify the work order, start it by epoch, run the handler, answer.

A work order runs only if the job's record agrees that this worker holds the
current epoch (``JobStore.start``): a stale order, or a copy of a finished one,
is dropped. A job started too many times by workers that died running it (a
poison job) is answered as abandoned instead of being run again.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pydantic import ValidationError

from project.core.a2a.envelope import Envelope, MessageType, now_ms
from project.core.constants import DISTRIBUTOR
from project.core.errors import (
    HandlerError,
    InvalidPayloadError,
    JobAbandonedError,
    JobError,
    LapsedEnvelopeError,
    UnknownTaskTypeError,
    describe_validation_error,
)
from project.core.hops import deadline_exceeded, lapsed_envelope, readmit
from project.core.messages import WorkOrder, WorkReport
from project.core.models import AgentStatus, JobStatus, Task
from project.core.runtime import Runtime, replay_of
from project.core.state.jobs import StartKind
from project.core.state.results import error_to_dict
from project.worker.handlers import HANDLERS

log = logging.getLogger("project.worker")


def execute_work_order(rt: Runtime, raw: Any) -> dict[str, Any] | None:
    """Run a signed work order; return the signed RESPONSE, or None for a dropped order.

    Raises:
        A2AError: the envelope is refused (it never runs).
    """
    worker_id = rt.identity.worker_id or ""
    try:
        envelope = rt.receive(raw, expected=MessageType.REQUEST, recipient=worker_id)
        order: WorkOrder = WorkOrder.from_payload(envelope.payload)
    except LapsedEnvelopeError as lapsed:
        order = WorkOrder.from_payload(lapsed_envelope(lapsed).payload)
        envelope, record = readmit(
            rt, lapsed, job_id=order.job_id, epoch=order.epoch, worker_id=worker_id
        )
        if (late := deadline_exceeded(record)) is not None:
            return answer(
                rt, envelope, _report(rt, order, JobStatus.FAILED, None, error_to_dict(late), 0.0)
            )
    started = rt.jobs.start(
        order.job_id,
        epoch=order.epoch,
        worker_id=worker_id,
        request=envelope,
        max_runs=rt.settings.max_attempts,
    )
    if started is StartKind.FINAL:
        raise replay_of(envelope, order.job_id, "final")
    if started is StartKind.STALE:
        log.info("dropped stale work order", extra={"job_id": order.job_id, "epoch": order.epoch})
        rt.local_state.record({"job_id": order.job_id, "event": "dropped", "epoch": order.epoch})
        return None
    rt.local_state.local_tasks[order.job_id] = Task(
        job_id=order.job_id,
        task_type=order.task_type,
        epoch=order.epoch,
        status=JobStatus.IN_PROGRESS,
        started_ms=now_ms(),
    )
    report = abandon(rt, order) if started is StartKind.EXHAUSTED else run_handler(rt, order)
    rt.local_state.local_tasks.pop(order.job_id, None)
    rt.local_state.record(
        {"job_id": order.job_id, "event": report.status.value, "ms": report.duration_ms}
    )
    # The work order is marked done by the distributor when it records the result,
    # so a redelivery after a crash before that point still runs.
    return answer(rt, envelope, report)


def run_handler(rt: Runtime, order: WorkOrder) -> WorkReport:
    """Run the order's handler and report its result, or its typed error."""
    rt.local_state.status = AgentStatus.BUSY
    started = time.perf_counter()
    failure: dict[str, str] | None = None
    try:
        result, status = call_handler(order), JobStatus.COMPLETED
    except JobError as error:
        result, status, failure = None, JobStatus.FAILED, error_to_dict(error)
    finally:
        rt.local_state.status = AgentStatus.IDLE
    return _report(rt, order, status, result, failure, time.perf_counter() - started)


def call_handler(order: WorkOrder) -> Any:
    """The handler's result for the order's validated payload.

    Raises:
        UnknownTaskTypeError: this worker has no handler for the task type.
        InvalidPayloadError: the handler's payload model refused the payload.
        HandlerError: the handler raised (its own JobErrors pass through).
    """
    handler = HANDLERS.get(order.task_type)
    if handler is None:
        raise UnknownTaskTypeError(f"this worker has no handler for {order.task_type!r}")
    try:
        payload = handler.payload_model.model_validate(order.payload)
    except ValidationError as exc:
        problems = describe_validation_error(exc, whole="payload")
        raise InvalidPayloadError(f"invalid {order.task_type} payload: {problems}") from None
    try:
        return handler.fn(payload)
    except JobError:
        raise
    except Exception as exc:
        log.warning("handler raised", exc_info=True, extra={"job_id": order.job_id})
        raise HandlerError(f"{order.task_type} handler raised {type(exc).__name__}: {exc}") from exc


def abandon(rt: Runtime, order: WorkOrder) -> WorkReport:
    """The report of a poison job: started too often by workers that died running it."""
    error = JobAbandonedError(
        f"job {order.job_id} abandoned: it was started {rt.settings.max_attempts} times "
        "and its worker process died each time (a poison job)"
    )
    return _report(rt, order, JobStatus.ABANDONED, None, error_to_dict(error), 0.0)


def answer(rt: Runtime, order_envelope: Envelope, report: WorkReport) -> dict[str, Any]:
    """The signed RESPONSE to a work order, in wire form."""
    return rt.reply(
        order_envelope, MessageType.RESPONSE, report.model_dump(mode="json"), recipient=DISTRIBUTOR
    ).to_wire()


def _report(
    rt: Runtime,
    order: WorkOrder,
    status: JobStatus,
    result: Any,
    error: dict[str, str] | None,
    duration_s: float,
) -> WorkReport:
    return WorkReport(
        job_id=order.job_id,
        epoch=order.epoch,
        status=status,
        result=result,
        error=error,
        worker_id=rt.identity.worker_id or "",
        duration_ms=round(duration_s * 1000, 3),
    )
