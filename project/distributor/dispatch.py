"""The distributor's two hops: route a job to one worker, then record its one result.

``assign_job``: verify the coordinator's REQUEST, pick a live eligible worker by
the routing strategy, move the job to a new epoch by compare-and-set, and send the
signed work order to ``worker.<id>`` with ``complete`` as its link callback.

``record_result``: verify the worker's RESPONSE and record the job's one result if
its epoch is current (a late result from a re-routed job changes nothing); the
record, the causal chain and the signed EVENT the coordinator follows are written
by one script, then the result is stored under the id the app holds.
"""

from __future__ import annotations

import itertools
import logging
import random
from enum import StrEnum
from typing import Any

from celery import signature

from project.core.a2a.envelope import Envelope, MessageType, now_ms
from project.core.celery_app import app
from project.core.constants import (
    COORDINATOR,
    DISTRIBUTOR,
    DISTRIBUTOR_QUEUE,
    KEY_JOB,
    KEY_RR,
    KEY_STATS_JOBS,
    TASK_COMPLETE,
    TASK_EXECUTE,
    execute_task_id,
    worker_queue,
)
from project.core.errors import (
    JobAbandonedError,
    JobError,
    LapsedEnvelopeError,
    NoEligibleWorkerError,
)
from project.core.hops import deadline_exceeded, lapsed_envelope, readmit
from project.core.messages import DispatchRequest, JobEvent, WorkOrder, WorkReport
from project.core.models import TIME_LIMIT_GRACE_S, AgentCard, JobStatus
from project.core.runtime import Runtime, replay_of
from project.core.state.jobs import AssignKind, FinishKind
from project.core.state.results import error_to_dict, publish_final_result
from project.distributor.routing import NEEDS_LOAD, NEEDS_SHARED_TURN, Candidate, choose, eligible

log = logging.getLogger("project.distributor")

_turns = itertools.count()


class Routing(StrEnum):
    """What ``assign_job`` did with a REQUEST."""

    SENT = "sent"
    """The work order went to the chosen worker's queue."""
    WAIT = "wait"
    """No eligible live worker yet: try again later, until the job's deadline."""
    FAILED = "failed"
    """The job ended here: no worker before its deadline, or too many attempts."""
    SKIPPED = "skipped"
    """The REQUEST is stale: the job moved on without it."""


# --- assign -------------------------------------------------------------------


def assign_job(rt: Runtime, raw: Any) -> Routing:
    """Route a signed job REQUEST to one live worker's queue.

    Raises:
        A2AError: the envelope is refused (it never runs).
    """
    try:
        envelope = rt.receive(raw, expected=MessageType.REQUEST, recipient=DISTRIBUTOR)
        request: DispatchRequest = DispatchRequest.from_payload(envelope.payload)
    except LapsedEnvelopeError as lapsed:
        request = DispatchRequest.from_payload(lapsed_envelope(lapsed).payload)
        envelope, record = readmit(rt, lapsed, job_id=request.job_id, epoch=request.expected_epoch)
        if (late := deadline_exceeded(record)) is not None:
            fail_job(rt, job_id=request.job_id, epoch=record.epoch, cause=envelope, error=late)
            return Routing.FAILED
    card = pick_worker(rt, request)
    if card is None:
        if now_ms() < request.deadline_ms:
            return Routing.WAIT
        fail_job(
            rt,
            job_id=request.job_id,
            epoch=request.expected_epoch,
            cause=envelope,
            error=NoEligibleWorkerError(
                f"no live worker offers {request.task_type!r} with tags "
                f"{list(request.requirements.tags)} before the job's deadline"
            ),
        )
        routing = Routing.FAILED
    else:
        routing = _assign_to(rt, envelope, request, card)
    rt.local_state.record({"job_id": request.job_id, "event": routing.value})
    return routing


def pick_worker(rt: Runtime, request: DispatchRequest) -> AgentCard | None:
    """The live eligible worker the routing strategy picks, or None if there is none."""
    cards = eligible(rt.live_workers.get(), request.task_type, request.requirements)
    if not cards:
        cards = eligible(rt.live_workers.get(fresh=True), request.task_type, request.requirements)
    if not cards:
        return None
    strategy = rt.settings.routing_strategy
    # Loads are read at most every WORKER_LOADS_CACHE_S and counted up here for each
    # job routed in between, so a burst still spreads (one read per interval, not per job).
    loads = rt.worker_loads.get() if strategy in NEEDS_LOAD else {}
    turn = int(rt.redis.incr(KEY_RR)) if strategy in NEEDS_SHARED_TURN else next(_turns)
    candidates = [Candidate(card, loads.get(card.id, 0)) for card in cards]
    chosen = choose(strategy, candidates, request.requirements, turn=turn, draw=random.random())
    if strategy in NEEDS_LOAD:
        loads[chosen.id] = loads.get(chosen.id, 0) + 1
    return chosen


def _assign_to(
    rt: Runtime, envelope: Envelope, request: DispatchRequest, card: AgentCard
) -> Routing:
    """Move the job to a new epoch for the worker of ``card`` and send it the work order."""
    outcome = rt.jobs.assign(
        request.job_id,
        expected_epoch=request.expected_epoch,
        worker_id=card.id,
        max_attempts=rt.settings.max_attempts,
        dispatch=envelope,
    )
    if outcome.kind is AssignKind.OK:
        send_work_order(rt, request, envelope, card.id, outcome.epoch, _time_limit(card, request))
        return Routing.SENT
    if outcome.kind is AssignKind.REDO:  # our own earlier try recorded it, may not have sent it
        holder = next((c for c in rt.live_workers.get() if c.id == outcome.assignee), None)
        limit = _time_limit(holder, request) if holder is not None else None
        send_work_order(rt, request, envelope, outcome.assignee, outcome.epoch, limit)
        return Routing.SENT
    if outcome.kind is AssignKind.FINAL and outcome.status != JobStatus.CANCELED:
        raise replay_of(envelope, request.job_id, outcome.status)
    if outcome.kind is AssignKind.EXHAUSTED:
        fail_job(
            rt,
            job_id=request.job_id,
            epoch=outcome.epoch,
            cause=envelope,
            error=JobAbandonedError(
                f"job {request.job_id} abandoned after {rt.settings.max_attempts} attempts "
                "(its workers kept dying)"
            ),
        )
        return Routing.FAILED
    log.info(
        "dispatch skipped",
        extra={"job_id": request.job_id, "why": outcome.kind.value, "status": outcome.status},
    )
    return Routing.SKIPPED


def _time_limit(card: AgentCard, request: DispatchRequest) -> float | None:
    return next((s.time_limit_s for s in card.skills if s.id == request.task_type), None)


def send_work_order(
    rt: Runtime,
    request: DispatchRequest,
    envelope: Envelope,
    worker_id: str,
    epoch: int,
    time_limit_s: float | None = None,
) -> None:
    """Sign the work order and send it to ``worker.<id>``, ``complete`` as its callback.

    Its Celery task id is ``{job id}.{epoch}`` (``cancel_job`` revokes it by that id).
    """
    order = WorkOrder(
        job_id=request.job_id,
        epoch=epoch,
        task_type=request.task_type,
        payload=request.payload,
        context=request.context,
    )
    work = rt.reply(
        envelope, MessageType.REQUEST, order.model_dump(mode="json"), recipient=worker_id
    )
    # Logs and Flower show a short description of each envelope, not its payload.
    callback = signature(
        TASK_COMPLETE, queue=DISTRIBUTOR_QUEUE, argsrepr=f"[<RESPONSE to {work.id}>]", app=app
    )
    limits: dict[str, float] = {}
    if time_limit_s is not None:
        limits = {"soft_time_limit": time_limit_s, "time_limit": time_limit_s + TIME_LIMIT_GRACE_S}
    app.send_task(
        TASK_EXECUTE,
        args=[work.to_wire()],
        task_id=execute_task_id(request.job_id, epoch),
        queue=worker_queue(worker_id),
        priority=request.priority.broker_priority,
        link=callback,
        argsrepr=work.brief(),
        **limits,
    )


# --- complete -------------------------------------------------------------------


def record_result(rt: Runtime, raw: Any) -> FinishKind | None:
    """Record a worker's signed RESPONSE as its job's one result.

    Returns what recording did, or None for a report that is not final.

    Raises:
        A2AError: the envelope is refused (it never runs).
    """
    try:
        envelope = rt.receive(raw, expected=MessageType.RESPONSE, recipient=DISTRIBUTOR)
        report: WorkReport = WorkReport.from_payload(envelope.payload)
    except LapsedEnvelopeError as lapsed:  # the work is done: record it if still current
        report = WorkReport.from_payload(lapsed_envelope(lapsed).payload)
        envelope, _ = readmit(rt, lapsed, job_id=report.job_id, epoch=report.epoch)
    kind: FinishKind | None = None
    if report.status is JobStatus.INPUT_REQUIRED:
        parked = rt.jobs.park(
            report.job_id, epoch=report.epoch, interrupts=report.interrupts or [], cause=envelope
        )
        rt.local_state.record({"job_id": report.job_id, "event": "parked" if parked else "stale"})
        return None
    if report.status.is_final:
        kind = finalize(
            rt,
            job_id=report.job_id,
            epoch=report.epoch,
            status=report.status,
            cause=envelope,
            result=report.result,
            error=report.error,
            worker_id=report.worker_id,
        )
    rt.local_state.record(
        {"job_id": report.job_id, "event": kind.value if kind is not None else "dropped"}
    )
    if kind is FinishKind.ALREADY and not _canceled(rt, report.job_id):
        # A copy of a RESPONSE whose result is recorded: a replay (or a redelivery
        # after a crash between recording and publishing, which finalize has healed
        # by publishing the recorded result again). Refused either way.
        raise replay_of(envelope, report.job_id, "final")
    return kind


def _canceled(rt: Runtime, job_id: str) -> bool:
    """True if the job was canceled (a late result of its run is simply discarded)."""
    return bool(rt.redis.hget(KEY_JOB + job_id, "status") == JobStatus.CANCELED.value)


def fail_job(rt: Runtime, *, job_id: str, epoch: int, cause: Envelope, error: JobError) -> None:
    """End a job with ``error`` as its one result (FAILED, or ABANDONED for a poison job)."""
    status = JobStatus.ABANDONED if isinstance(error, JobAbandonedError) else JobStatus.FAILED
    finalize(rt, job_id=job_id, epoch=epoch, status=status, cause=cause, error=error_to_dict(error))


def finalize(
    rt: Runtime,
    *,
    job_id: str,
    epoch: int,
    status: JobStatus,
    cause: Envelope,
    result: Any = None,
    error: dict[str, str] | None = None,
    worker_id: str = "",
) -> FinishKind:
    """Record a job's final outcome once, and publish it to the app.

    The signed EVENT for the coordinator is recorded in the job's causal chain and
    announced on pub/sub by the same script that records the result, so it costs
    no Celery task.
    """
    event = rt.reply(
        cause,
        MessageType.EVENT,
        JobEvent(job_id=job_id, epoch=epoch, status=status, worker_id=worker_id).model_dump(
            mode="json"
        ),
        recipient=COORDINATOR,
    )
    outcome = rt.jobs.finish(
        job_id,
        epoch=epoch,
        status=status,
        result=result,
        error=error,
        cause=cause,
        event=event,
    )
    if outcome.kind is FinishKind.RECORDED:
        publish_final_result(app.backend, job_id, status, result, error)
    elif outcome.kind is FinishKind.ALREADY and outcome.status == JobStatus.CANCELED:
        # The run's result is discarded; the cancel's own result is published again
        # (idempotent), in case the process that canceled died before it could.
        log.info("discarded the result of a canceled job", extra={"job_id": job_id})
        publish_final_result(app.backend, job_id, outcome.status, None, outcome.error)
    elif outcome.kind is FinishKind.ALREADY:
        # A redelivery after a crash between recording and publishing: publish the
        # first recorded result again (idempotent), never the new one.
        publish_final_result(app.backend, job_id, outcome.status, outcome.result, outcome.error)
    elif outcome.kind is FinishKind.STALE:
        rt.redis.hincrby(KEY_STATS_JOBS, "stale_results_ignored", 1)
        log.info("ignored a result from a stale epoch", extra={"job_id": job_id, "epoch": epoch})
    return outcome.kind
