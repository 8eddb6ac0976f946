"""The worker's hop: verify the work order, start it by epoch, run the handler, answer.

A work order runs only if the job's record agrees that this worker holds the
current epoch (``JobStore.start``): a stale order, a canceled job's, or a copy of a
finished one, is dropped. A job started too many times by workers that died running
it (a poison job) is answered as abandoned instead of being run again.

A handler's transient failures are retried by its task type's retry policy, in this
run (counted in the job's ``retries``, never as runs). An agent's graph runs in
:mod:`project.worker.graphs`; its report may be INPUT_REQUIRED (parked at an interrupt).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from pydantic import BaseModel, JsonValue, ValidationError

from project.core.a2a.envelope import Envelope, MessageType, now_ms
from project.core.constants import DISTRIBUTOR
from project.core.errors import (
    A2AError,
    HandlerError,
    InvalidPayloadError,
    JobAbandonedError,
    JobError,
    JobTimeLimitError,
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
from project.worker.context import JobContext, running
from project.worker.handlers import HANDLERS, Handler

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
    entry = HANDLERS.get(order.task_type)
    started = rt.jobs.start(
        order.job_id,
        epoch=order.epoch,
        worker_id=worker_id,
        request=envelope,
        max_runs=rt.settings.max_attempts,
        kind=entry.kind if entry is not None else "handler",
    )
    if started is StartKind.FINAL:
        raise replay_of(envelope, order.job_id, "final")
    if started in (StartKind.STALE, StartKind.CANCELED):
        log.info(
            "dropped work order",
            extra={"job_id": order.job_id, "epoch": order.epoch, "why": started.value},
        )
        rt.local_state.record({"job_id": order.job_id, "event": "dropped", "epoch": order.epoch})
        return None
    rt.local_state.local_tasks[order.job_id] = Task(
        job_id=order.job_id,
        task_type=order.task_type,
        epoch=order.epoch,
        status=JobStatus.IN_PROGRESS,
        started_ms=now_ms(),
    )
    try:
        report = abandon(rt, order) if started is StartKind.EXHAUSTED else run_handler(rt, order)
    finally:
        rt.local_state.local_tasks.pop(order.job_id, None)
    if report is None:  # an agent's run found its job canceled or re-routed: nothing to say
        rt.local_state.record({"job_id": order.job_id, "event": "stopped", "epoch": order.epoch})
        return None
    rt.local_state.record(
        {"job_id": order.job_id, "event": report.status.value, "ms": report.duration_ms}
    )
    # The work order is marked done by the distributor when it records the result,
    # so a redelivery after a crash before that point still runs.
    return answer(rt, envelope, report)


def run_handler(rt: Runtime, order: WorkOrder) -> WorkReport | None:
    """Run the order's handler or agent and report its result, or its typed error.

    Returns None when an agent's run found its job canceled or re-routed (it stopped).
    """
    rt.local_state.status = AgentStatus.BUSY
    started = time.perf_counter()
    failure: dict[str, str] | None = None
    interrupts: list[dict[str, JsonValue]] | None = None
    context = order.context
    job = JobContext(
        job_id=order.job_id,
        task_type=order.task_type,
        epoch=order.epoch,
        a2a_message=context.a2a_message if context else None,
        owner=context.owner if context else None,
    )
    try:
        with running(job):
            entry, payload = validated(order)
            if entry.kind == "agent":
                from project.worker.graphs import run_agent  # the graph engine: agents only

                outcome = run_agent(rt, order, entry, payload)
                if outcome.status is None:
                    return None
                result, status, interrupts = outcome.result, outcome.status, outcome.interrupts
            else:
                on_retry = functools.partial(rt.jobs.count_retry, order.job_id, order.epoch)
                result = call_handler(order, entry, payload, on_retry=on_retry)
                status = JobStatus.COMPLETED
    except JobError as error:
        result, status, failure = None, JobStatus.FAILED, error_to_dict(error)
    except SoftTimeLimitExceeded:  # wherever the soft limit struck (a backoff, a read...)
        limit = HANDLERS[order.task_type].time_limit_s if order.task_type in HANDLERS else None
        late = JobTimeLimitError(f"{order.task_type} ran over its time limit of {limit}s")
        result, status, failure = None, JobStatus.FAILED, error_to_dict(late)
    except _Superseded:
        return None
    finally:
        rt.local_state.status = AgentStatus.IDLE
    report = _report(rt, order, status, result, failure, time.perf_counter() - started)
    return report.model_copy(update={"interrupts": interrupts}) if interrupts else report


class _Superseded(Exception):
    """The job was canceled or re-routed while its run waited to retry: stop, say nothing."""


def validated(order: WorkOrder) -> tuple[Handler, BaseModel]:
    """The order's task type and its payload, validated by the task type's model.

    Raises:
        UnknownTaskTypeError: this worker has no handler for the task type.
        InvalidPayloadError: the handler's payload model refused the payload.
    """
    entry = HANDLERS.get(order.task_type)
    if entry is None:
        raise UnknownTaskTypeError(f"this worker has no handler for {order.task_type!r}")
    try:
        return entry, entry.payload_model.model_validate(order.payload)
    except ValidationError as exc:
        problems = describe_validation_error(exc, whole="payload")
        raise InvalidPayloadError(f"invalid {order.task_type} payload: {problems}") from None


def call_handler(
    order: WorkOrder,
    entry: Handler,
    payload: BaseModel,
    *,
    on_retry: Callable[[], bool] = lambda: True,
) -> Any:
    """The handler's result for the validated payload, with its retry policy
    (``on_retry`` counts each retry; False means the run is no longer the job's).

    Raises:
        HandlerError: the handler raised (its own JobErrors pass through).
        SoftTimeLimitExceeded: past the time limit (``run_handler`` types it).
    """
    retries = 0
    while True:
        try:
            return entry.fn(payload)
        except (JobError, SoftTimeLimitExceeded):
            raise  # the soft time limit is typed by run_handler, wherever it strikes
        except Exception as exc:
            backoff_or_fail(order, entry, exc, retries)
            retries += 1
            if not on_retry():
                raise _Superseded() from exc


def backoff_or_fail(order: WorkOrder, entry: Handler, exc: Exception, retries: int) -> None:
    """Wait before retry number ``retries`` of a run that raised ``exc``, if the task
    type's retry policy allows one.

    Raises:
        HandlerError: the policy allows no (more) retry of ``exc``.
    """
    policy = entry.retry
    if policy is None or retries >= policy.max_retries or not isinstance(exc, policy.on):
        log.warning(f"{entry.kind} raised", exc_info=True, extra={"job_id": order.job_id})
        raise HandlerError(
            f"{order.task_type} {entry.kind} raised {type(exc).__name__}: {exc}"
        ) from exc
    time.sleep(policy.delay_s(retries))


def time_limit_report(rt: Runtime, raw: Any) -> dict[str, Any] | None:
    """The signed RESPONSE for a work order whose run was killed at its hard time limit
    (FAILED, JobTimeLimitError), or None if the order is not one of ours."""
    try:
        try:
            envelope = rt.receive(
                raw, expected=MessageType.REQUEST, recipient=rt.identity.worker_id or ""
            )
        except LapsedEnvelopeError as lapsed:  # it ran longer than an envelope lives
            envelope = lapsed_envelope(lapsed)
        order: WorkOrder = WorkOrder.from_payload(envelope.payload)
    except A2AError:
        return None
    error = JobTimeLimitError(
        f"{order.task_type} ran over its time limit and ignored it; its run was stopped"
    )
    log.warning("run killed at its hard time limit", extra={"job_id": order.job_id})
    report = _report(rt, order, JobStatus.FAILED, None, error_to_dict(error), 0.0)
    return answer(rt, envelope, report)


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
