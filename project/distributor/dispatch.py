"""The distributor's graphs: route a job to one worker, and record its result.

``assign``: verify the REQUEST -> decide (eligible live workers, routing
strategy) -> act (move the job to a new epoch by compare-and-set, send the
signed work order to ``worker.<id>`` with ``complete`` as its link callback)
-> report.

``complete``: verify the worker's RESPONSE -> record the job's one result if
its epoch is current (a late result from a re-routed job changes nothing) ->
store it in the result backend under the job id -> EVENT to the coordinator.
"""

from __future__ import annotations

import itertools
import logging
import random
import threading
import time
from typing import Any

from celery import signature

from project.core.celery_app import app
from project.core.constants import (
    COORDINATOR,
    DISTRIBUTOR,
    DISTRIBUTOR_QUEUE,
    KEY_RR,
    TASK_COMPLETE,
    TASK_EXECUTE,
    TASK_JOB_EVENT,
    worker_queue,
)
from project.core.envelope import Envelope, MessageType, now_ms
from project.core.errors import (
    JobAbandonedError,
    NoEligibleWorkerError,
)
from project.core.graph import HopState, build_hop_graph
from project.core.messages import DispatchRequest, JobEvent, WorkOrder, WorkReport
from project.core.models import AgentCard, JobStatus
from project.core.results import error_to_dict, publish_final_result
from project.core.runtime import Runtime, get_runtime
from project.distributor.routing import NEEDS_LOAD, NEEDS_SHARED_TURN, Candidate, choose, eligible

log = logging.getLogger("project.distributor")

LIVE_WORKERS_CACHE_S = 0.5
KEY_STATS = "stats:jobs"


class _LiveWorkers:
    """Live worker cards, re-read from the registry at most every half second."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cards: list[AgentCard] = []
        self._read_at = 0.0

    def get(self, rt: Runtime, *, fresh: bool = False) -> list[AgentCard]:
        with self._lock:
            if fresh or time.monotonic() - self._read_at > LIVE_WORKERS_CACHE_S:
                self._cards = rt.registry.live_workers(rt.settings.heartbeat_timeout_s)
                self._read_at = time.monotonic()
            return self._cards


_live = _LiveWorkers()
_turns = itertools.count()


def _verify_for_distributor(raw: Any, expected: MessageType) -> Envelope:
    return get_runtime().receive(raw, expected=expected, recipient=DISTRIBUTOR)


def finalize(
    rt: Runtime,
    *,
    job_id: str,
    epoch: int,
    status: JobStatus,
    cause: Envelope,
    result: Any = None,
    error: dict[str, str] | None = None,
    done_ids: tuple[str, ...] = (),
    worker_id: str = "",
) -> str:
    """Record a job's final outcome once, publish it to the app, tell the coordinator.

    Returns the outcome kind of :meth:`JobStore.finish` (``recorded``, ``already``,
    ``stale``, ``missing``).
    """
    outcome = rt.jobs.finish(
        job_id,
        epoch=epoch,
        status=status,
        result=result,
        error=error,
        cause=cause,
        done_ids=done_ids,
    )
    if outcome.kind == "recorded":
        publish_final_result(app.backend, job_id, status, result, error)
        event = JobEvent(job_id=job_id, epoch=epoch, status=status, worker_id=worker_id)
        envelope = rt.signer.reply(
            cause,
            MessageType.EVENT,
            event.model_dump(mode="json"),
            sender=rt.identity.agent_id,
            recipient=COORDINATOR,
        )
        app.send_task(TASK_JOB_EVENT, args=[envelope.to_wire()], argsrepr=envelope.brief())
    elif outcome.kind == "already":
        # A redelivery after a crash between recording and publishing: publish the
        # first recorded result again (idempotent), never the new one.
        publish_final_result(app.backend, job_id, outcome.status, outcome.result, outcome.error)
    elif outcome.kind == "stale":
        rt.redis.hincrby(KEY_STATS, "stale_results_ignored", 1)
        log.info("ignored a result from a stale epoch", extra={"job_id": job_id, "epoch": epoch})
    return outcome.kind


# --- assign -------------------------------------------------------------------


def _assign_verify(state: HopState) -> dict[str, Any]:
    return {"envelope": _verify_for_distributor(state["raw"], MessageType.REQUEST)}


def _assign_decide(state: HopState) -> dict[str, Any]:
    rt = get_runtime()
    request: DispatchRequest = DispatchRequest.from_payload(state["envelope"].payload)
    cards = eligible(_live.get(rt), request.task_type, request.requirements)
    if not cards:
        cards = eligible(_live.get(rt, fresh=True), request.task_type, request.requirements)
    if not cards:
        if now_ms() >= request.deadline_ms:
            return {"decision": "fail", "outcome": {"request": request}}
        return {"decision": "wait", "outcome": {"request": request}}
    strategy = rt.settings.routing_strategy
    loads = rt.registry.loads([c.id for c in cards]) if strategy in NEEDS_LOAD else {}
    turn = int(rt.redis.incr(KEY_RR)) if strategy in NEEDS_SHARED_TURN else next(_turns)
    candidates = [Candidate(card, loads.get(card.id, 0)) for card in cards]
    chosen = choose(strategy, candidates, request.requirements, turn=turn, draw=random.random())
    return {"decision": "act", "outcome": {"request": request, "worker_id": chosen.id}}


def _send_work_order(
    rt: Runtime, request: DispatchRequest, envelope: Envelope, worker_id: str, epoch: int
) -> None:
    order = WorkOrder(
        job_id=request.job_id, epoch=epoch, task_type=request.task_type, payload=request.payload
    )
    work = rt.signer.reply(
        envelope,
        MessageType.REQUEST,
        order.model_dump(mode="json"),
        sender=rt.identity.agent_id,
        recipient=worker_id,
    )
    # Logs and Flower show a short description of each envelope, not its payload.
    callback = signature(
        TASK_COMPLETE,
        queue=DISTRIBUTOR_QUEUE,
        argsrepr=f"[<RESPONSE to {work.id}>]",
        app=app,
    )
    app.send_task(
        TASK_EXECUTE,
        args=[work.to_wire()],
        queue=worker_queue(worker_id),
        priority=request.priority.broker_priority,
        link=callback,
        argsrepr=work.brief(),
    )


def _assign_act(state: HopState) -> dict[str, Any]:
    rt = get_runtime()
    envelope = state["envelope"]
    request: DispatchRequest = state["outcome"]["request"]
    worker_id: str = state["outcome"]["worker_id"]
    outcome = rt.jobs.assign(
        request.job_id,
        expected_epoch=request.expected_epoch,
        worker_id=worker_id,
        max_attempts=rt.settings.max_attempts,
        dispatch=envelope,
    )
    if outcome.kind == "ok":
        _send_work_order(rt, request, envelope, worker_id, outcome.epoch)
    elif outcome.kind == "redo":  # our own earlier try recorded it but may not have sent it
        _send_work_order(rt, request, envelope, outcome.assignee, outcome.epoch)
    elif outcome.kind == "exhausted":
        error = JobAbandonedError(
            f"job {request.job_id} abandoned after {rt.settings.max_attempts} attempts "
            "(its workers kept dying)"
        )
        finalize(
            rt,
            job_id=request.job_id,
            epoch=outcome.epoch,
            status=JobStatus.ABANDONED,
            cause=envelope,
            error=error_to_dict(error),
        )
    else:
        log.info(
            "dispatch skipped",
            extra={"job_id": request.job_id, "why": outcome.kind, "status": outcome.status},
        )
    return {"outcome": {**state["outcome"], "kind": outcome.kind, "epoch": outcome.epoch}}


def _assign_report(state: HopState) -> dict[str, Any]:
    rt = get_runtime()
    envelope = state["envelope"]
    decision = state.get("decision")
    request: DispatchRequest = state["outcome"]["request"]
    if decision == "wait":
        return {"reply": "wait"}
    if decision == "fail":
        error = NoEligibleWorkerError(
            f"no live worker offers {request.task_type!r} with tags "
            f"{list(request.requirements.tags)} before the job's deadline"
        )
        finalize(
            rt,
            job_id=request.job_id,
            epoch=request.expected_epoch,
            status=JobStatus.FAILED,
            cause=envelope,
            error=error_to_dict(error),
        )
    rt.replay.finish(envelope)
    rt.local_state.record({"job_id": request.job_id, "event": decision, **_brief(state)})
    return {"reply": None}


def _brief(state: HopState) -> dict[str, Any]:
    outcome = state.get("outcome", {})
    return {k: outcome[k] for k in ("worker_id", "kind", "epoch") if k in outcome}


ASSIGN_GRAPH = build_hop_graph(
    "distributor.assign",
    verify=_assign_verify,
    decide=_assign_decide,
    act=_assign_act,
    report=_assign_report,
)


# --- complete -------------------------------------------------------------------


def _complete_verify(state: HopState) -> dict[str, Any]:
    return {"envelope": _verify_for_distributor(state["raw"], MessageType.RESPONSE)}


def _complete_decide(state: HopState) -> dict[str, Any]:
    report: WorkReport = WorkReport.from_payload(state["envelope"].payload)
    if not report.status.is_final:
        return {"decision": "drop", "outcome": {"report": report}}
    return {"decision": "act", "outcome": {"report": report}}


def _complete_act(state: HopState) -> dict[str, Any]:
    rt = get_runtime()
    envelope = state["envelope"]
    report: WorkReport = state["outcome"]["report"]
    parent = envelope.causal.parent_request_id
    kind = finalize(
        rt,
        job_id=report.job_id,
        epoch=report.epoch,
        status=report.status,
        cause=envelope,
        result=report.result,
        error=report.error,
        # The work order is done once its result is recorded. This RESPONSE is marked
        # done only in report, after the result is published: a redelivery after a
        # crash in between must get through to publish the recorded result again.
        done_ids=(parent,) if parent else (),
        worker_id=report.worker_id,
    )
    return {"outcome": {"report": report, "kind": kind}}


def _complete_report(state: HopState) -> dict[str, Any]:
    rt = get_runtime()
    report: WorkReport = state["outcome"]["report"]
    rt.replay.finish(state["envelope"])
    rt.local_state.record(
        {"job_id": report.job_id, "event": state["outcome"].get("kind", "dropped")}
    )
    return {"reply": None}


COMPLETE_GRAPH = build_hop_graph(
    "distributor.complete",
    verify=_complete_verify,
    decide=_complete_decide,
    act=_complete_act,
    report=_complete_report,
)
