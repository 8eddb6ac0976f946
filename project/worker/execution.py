"""The worker's graph: verify the work order, start it by epoch, run the handler, report."""

from __future__ import annotations

import logging
import time
from typing import Any

from pydantic import ValidationError

from project.core.constants import DISTRIBUTOR
from project.core.envelope import MessageType
from project.core.errors import (
    HandlerError,
    InvalidPayloadError,
    JobAbandonedError,
    JobError,
    UnknownTaskTypeError,
)
from project.core.graph import HopState, build_hop_graph
from project.core.messages import WorkOrder, WorkReport
from project.core.models import AgentStatus, JobStatus
from project.core.results import error_to_dict
from project.core.runtime import get_runtime
from project.worker.handlers import HANDLERS

log = logging.getLogger("project.worker")


def _verify(state: HopState) -> dict[str, Any]:
    rt = get_runtime()
    worker_id = rt.identity.worker_id or ""
    return {"envelope": rt.receive(state["raw"], expected=MessageType.REQUEST, recipient=worker_id)}


def _decide(state: HopState) -> dict[str, Any]:
    rt = get_runtime()
    envelope = state["envelope"]
    order: WorkOrder = WorkOrder.from_payload(envelope.payload)
    worker_id = rt.identity.worker_id or ""
    started = rt.jobs.start(
        order.job_id,
        epoch=order.epoch,
        worker_id=worker_id,
        request=envelope,
        max_runs=rt.settings.max_attempts,
    )
    if started == "exhausted":
        return {"decision": "act", "outcome": {"order": order, "poison": True}}
    if started not in ("run", "rerun"):
        log.info("dropped stale work order", extra={"job_id": order.job_id, "epoch": order.epoch})
        return {"decision": "drop", "outcome": {"order": order, "why": started}}
    return {"decision": "act", "outcome": {"order": order}}


def _run_handler(order: WorkOrder) -> tuple[JobStatus, Any, dict[str, str] | None]:
    handler = HANDLERS.get(order.task_type)
    try:
        if handler is None:
            raise UnknownTaskTypeError(f"this worker has no handler for {order.task_type!r}")
        try:
            payload = handler.payload_model.model_validate(order.payload)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'payload'}: {e['msg']}"
                for e in exc.errors()[:5]
            )
            raise InvalidPayloadError(f"invalid {order.task_type} payload: {problems}") from None
        try:
            return JobStatus.COMPLETED, handler.fn(payload), None
        except JobError:
            raise
        except Exception as exc:
            log.warning("handler raised", exc_info=True, extra={"job_id": order.job_id})
            raise HandlerError(
                f"{order.task_type} handler raised {type(exc).__name__}: {exc}"
            ) from exc
    except JobError as error:
        return JobStatus.FAILED, None, error_to_dict(error)


def _act(state: HopState) -> dict[str, Any]:
    rt = get_runtime()
    order: WorkOrder = state["outcome"]["order"]
    rt.local_state.status = AgentStatus.BUSY
    started = time.perf_counter()
    status: JobStatus
    result: Any
    error: dict[str, str] | None
    if state["outcome"].get("poison"):
        abandoned = JobAbandonedError(
            f"job {order.job_id} abandoned: it was started {rt.settings.max_attempts} times "
            "and its worker process died each time (a poison job)"
        )
        status, result, error = JobStatus.ABANDONED, None, error_to_dict(abandoned)
    else:
        status, result, error = _run_handler(order)
    duration_ms = (time.perf_counter() - started) * 1000
    rt.local_state.status = AgentStatus.IDLE
    report = WorkReport(
        job_id=order.job_id,
        epoch=order.epoch,
        status=status,
        result=result,
        error=error,
        worker_id=rt.identity.worker_id or "",
        duration_ms=round(duration_ms, 3),
    )
    return {"outcome": {"order": order, "report": report}}


def _report(state: HopState) -> dict[str, Any]:
    rt = get_runtime()
    envelope = state["envelope"]
    order: WorkOrder = state["outcome"]["order"]
    if state.get("decision") != "act":
        rt.replay.finish(envelope)  # a dropped order is finished: its copies are replays
        rt.local_state.record({"job_id": order.job_id, "event": "dropped", "epoch": order.epoch})
        return {"reply": None}
    report: WorkReport = state["outcome"]["report"]
    rt.local_state.record(
        {"job_id": order.job_id, "event": report.status.value, "ms": report.duration_ms}
    )
    response = rt.signer.reply(
        envelope,
        MessageType.RESPONSE,
        report.model_dump(mode="json"),
        sender=rt.identity.agent_id,
        recipient=DISTRIBUTOR,
    )
    # The work order is marked done by the distributor when it records the result,
    # so a redelivery after a crash before that point still runs.
    return {"reply": response.to_wire()}


EXECUTE_GRAPH = build_hop_graph(
    "worker.execute", verify=_verify, decide=_decide, act=_act, report=_report
)
