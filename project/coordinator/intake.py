"""The coordinator's graphs: take a job in, and follow its final EVENT.

``submit``: verify the job spec -> decide (does any registered worker offer the
task type?) -> act (record the PENDING job, send a signed REQUEST to the
distributor) -> report. The job id is the Celery task id the app holds; the
final result is stored under it later by the distributor.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from pydantic import ValidationError

from project.core.celery_app import app
from project.core.constants import COORDINATOR, DISTRIBUTOR, TASK_ASSIGN
from project.core.envelope import MessageType, now_ms
from project.core.errors import InvalidJobError, UnknownTaskTypeError
from project.core.graph import HopState, build_hop_graph
from project.core.messages import DispatchRequest, JobEvent
from project.core.models import JobSpec, JobStatus
from project.core.runtime import Runtime, get_runtime

log = logging.getLogger("project.coordinator")

TASK_TYPES_CACHE_S = 1.0


class _OfferedTaskTypes:
    """Task types some registered worker offers, re-read at most once a second."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._types: frozenset[str] = frozenset()
        self._read_at = 0.0

    def get(self, rt: Runtime, *, fresh: bool = False) -> frozenset[str]:
        with self._lock:
            if fresh or time.monotonic() - self._read_at > TASK_TYPES_CACHE_S:
                cards = rt.registry.cards().values()
                self._types = frozenset(
                    t for c in cards if c.tier == "worker" for t in c.task_types
                )
                self._read_at = time.monotonic()
            return self._types


_offered = _OfferedTaskTypes()


def dispatch_request(rt: Runtime, request: DispatchRequest, *, parent: Any = None) -> None:
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


# --- submit -------------------------------------------------------------------


def _submit_verify(state: HopState) -> dict[str, Any]:
    rt = get_runtime()
    try:
        spec = JobSpec.model_validate(state["raw"])
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise InvalidJobError(f"invalid job: {problems}") from None
    size = len(json.dumps(spec.payload, separators=(",", ":")))
    if size > rt.settings.max_payload_bytes:
        raise InvalidJobError(
            f"job payload is {size} bytes, over the limit of {rt.settings.max_payload_bytes}"
        )
    return {"outcome": {"spec": spec}}


def _submit_decide(state: HopState) -> dict[str, Any]:
    rt = get_runtime()
    spec: JobSpec = state["outcome"]["spec"]
    if spec.task_type not in _offered.get(rt) and spec.task_type not in _offered.get(
        rt, fresh=True
    ):
        known = ", ".join(sorted(_offered.get(rt))) or "none"
        raise UnknownTaskTypeError(
            f"unknown task type {spec.task_type!r}: no registered worker offers it "
            f"(offered: {known})"
        )
    return {"decision": "act"}


def _submit_act(state: HopState) -> dict[str, Any]:
    rt = get_runtime()
    spec: JobSpec = state["outcome"]["spec"]
    job_id: str = state["context"]["job_id"]
    deadline_s = spec.deadline_s or rt.settings.assign_deadline_s
    deadline_ms = now_ms() + int(deadline_s * 1000)
    if not rt.jobs.create(job_id, spec, deadline_ms=deadline_ms):
        record = rt.jobs.get(job_id)  # a redelivery of this submit: send it on only if unsent
        if record is None or record.status is not JobStatus.PENDING:
            return {"outcome": {"spec": spec, "sent": False}}
        deadline_ms = record.deadline_ms
    request = DispatchRequest(
        job_id=job_id,
        task_type=spec.task_type,
        payload=spec.payload,
        priority=spec.priority,
        requirements=spec.requirements,
        deadline_ms=deadline_ms,
        expected_epoch=0,
        reason="new",
    )
    dispatch_request(rt, request)
    return {"outcome": {"spec": spec, "sent": True}}


def _submit_report(state: HopState) -> dict[str, Any]:
    rt = get_runtime()
    spec: JobSpec = state["outcome"]["spec"]
    rt.local_state.record(
        {"job_id": state["context"]["job_id"], "event": "submitted", "task_type": spec.task_type}
    )
    return {"reply": None}


SUBMIT_GRAPH = build_hop_graph(
    "coordinator.submit",
    verify=_submit_verify,
    decide=_submit_decide,
    act=_submit_act,
    report=_submit_report,
)


# --- job events -------------------------------------------------------------------


def _event_verify(state: HopState) -> dict[str, Any]:
    rt = get_runtime()
    return {"envelope": rt.receive(state["raw"], expected=MessageType.EVENT, recipient=COORDINATOR)}


def _event_decide(state: HopState) -> dict[str, Any]:
    event: JobEvent = JobEvent.from_payload(state["envelope"].payload)
    return {"decision": "act", "outcome": {"event": event}}


def _event_act(state: HopState) -> dict[str, Any]:
    rt = get_runtime()
    event: JobEvent = state["outcome"]["event"]
    rt.jobs.append_chain(event.job_id, state["envelope"])
    summary = rt.local_state.variables.setdefault("finished", {})
    if isinstance(summary, dict):
        summary[event.status.value] = int(summary.get(event.status.value, 0) or 0) + 1  # type: ignore[arg-type]
    return {}


def _event_report(state: HopState) -> dict[str, Any]:
    rt = get_runtime()
    event: JobEvent = state["outcome"]["event"]
    rt.replay.finish(state["envelope"])
    rt.local_state.record({"job_id": event.job_id, "event": event.status.value})
    return {"reply": None}


EVENT_GRAPH = build_hop_graph(
    "coordinator.job_event",
    verify=_event_verify,
    decide=_event_decide,
    act=_event_act,
    report=_event_report,
)
