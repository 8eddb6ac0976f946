"""Running an agent's graph for one work order: resume, stream, park, finish.

The graph is compiled once per process with :class:`RedisSaver` (thread id = job id).
Every checkpoint write of a run is fenced by the job's epoch and status (checked in the
same Lua script as the write): a run whose job was re-routed to another worker, or
canceled, writes nothing and stops at its next step boundary. Progress (each super-step's
update and each custom event) goes to the job's event log through a script with the same
fence, one round trip per step.

Where a run starts:

* no checkpoint yet: the validated payload is the graph's input;
* parked at interrupts: the answers ``resume_job`` gave for *those* interrupt ids resume
  it (``Command(resume={id: value})``); answers to other ids are ignored, so a re-routed
  copy of an old answer never answers a new question;
* mid-graph (its worker died): it continues from the last checkpoint, so the steps that
  completed do not run again (the step in flight may);
* already at the end (its worker died before reporting): the final state is the result.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from langchain_core.runnables import RunnableConfig
from langgraph.types import Command
from pydantic import JsonValue
from pydantic_core import to_jsonable_python

from project.core.checkpoint import FENCE, CheckpointDecodeError, FencedWriteError, RedisSaver
from project.core.constants import KEY_JOB
from project.core.errors import HandlerError, JobError, StoreUnavailableError
from project.core.messages import WorkOrder
from project.core.models import JobStatus
from project.core.runtime import Runtime
from project.worker.execution import backoff_or_fail
from project.worker.handlers import Handler

log = logging.getLogger("project.worker.agents")

_compiled: dict[str, Any] = {}


@dataclass(frozen=True, slots=True)
class AgentOutcome:
    """What one run of an agent came to. ``status`` None: the run is stale or canceled."""

    status: JobStatus | None
    result: JsonValue = None
    interrupts: list[dict[str, JsonValue]] | None = None


class _Stopped(Exception):
    """The job's event-log fence refused an append: this run is stale or canceled."""


def jsonable(value: Any) -> JsonValue:
    """``value`` as JSON (pydantic models, LangChain messages, dataclasses...)."""
    converted: JsonValue = to_jsonable_python(value, fallback=repr)
    return converted


def compiled_graph(rt: Runtime, entry: Handler) -> Any:
    """The agent's graph, compiled once per process with the Redis checkpointer."""
    graph = _compiled.get(entry.task_type)
    if graph is None:
        saver = RedisSaver(rt.redis, allowed_types=entry.types)
        graph = entry.fn().compile(checkpointer=saver)
        _compiled[entry.task_type] = graph
    return graph


def run_agent(rt: Runtime, order: WorkOrder, entry: Handler, payload: Any) -> AgentOutcome:
    """Run (or resume) the agent's graph for a work order, with its retry policy.

    Raises:
        JobError: the run failed (HandlerError for an exception of the graph's own).
        SoftTimeLimitExceeded: past the time limit (``run_handler`` types it).
    """
    graph = compiled_graph(rt, entry)
    config: RunnableConfig = {
        "configurable": {"thread_id": order.job_id, FENCE: [KEY_JOB + order.job_id, order.epoch]}
    }
    try:
        return _run(rt, order, entry, payload, graph, config)
    except CheckpointDecodeError as exc:
        log.error("refused a checkpoint", extra={"job_id": order.job_id, "error": str(exc)})
        raise HandlerError(f"the job's checkpoint was refused: {exc}") from None
    except StoreUnavailableError:
        # Redis is gone: nothing can be reported either. The job stays IN_PROGRESS at this
        # epoch and the health check sends it on once Redis is back; its thread resumes
        # from the last checkpoint that was stored.
        log.warning("Redis unreachable mid-run: leaving the job", extra={"job_id": order.job_id})
        return AgentOutcome(None)


def _run(
    rt: Runtime, order: WorkOrder, entry: Handler, payload: Any, graph: Any, config: Any
) -> AgentOutcome:
    state = graph.get_state(config)
    started = state.created_at is not None  # the thread has a checkpoint
    if started and not state.next and not state.interrupts:
        return _final(entry, state.values)  # it ended; its worker died before reporting
    graph_input = _start_input(order, state) if started else payload.model_dump(mode="json")
    retries = 0
    while True:
        try:
            _stream(rt, order, graph, graph_input, config)
            break
        except (FencedWriteError, _Stopped):
            return AgentOutcome(None)
        except (JobError, SoftTimeLimitExceeded):
            raise  # the soft time limit is typed by run_handler, wherever it strikes
        except Exception as exc:
            backoff_or_fail(order, entry, exc, retries)
            retries += 1
            if not rt.jobs.count_retry(order.job_id, order.epoch):
                return AgentOutcome(None)  # canceled or re-routed meanwhile: no retry
            # From the last checkpoint, so only the failed step runs again (or from the
            # input, if the run failed before its first checkpoint was stored).
            if graph.get_state(config).created_at is None:
                graph_input = payload.model_dump(mode="json")
            else:
                graph_input = None
    state = graph.get_state(config)
    if state.interrupts:
        pending = [{"id": i.id, "value": jsonable(i.value)} for i in state.interrupts]
        return AgentOutcome(JobStatus.INPUT_REQUIRED, interrupts=pending)
    return _final(entry, state.values)


def _start_input(order: WorkOrder, state: Any) -> Any:
    """Where a started thread goes on: the answers to its own pending interrupts, or
    (None) on from its last checkpoint."""
    answers = (order.context.resume if order.context else None) or {}
    matched = {i.id: answers[i.id] for i in state.interrupts if i.id in answers}
    return Command(resume=matched) if matched else None


def _stream(rt: Runtime, order: WorkOrder, graph: Any, graph_input: Any, config: Any) -> None:
    # durability="sync": a step's checkpoint is stored before the next step starts, so a
    # worker that dies re-runs at most the one step in flight.
    stream = graph.stream(graph_input, config, stream_mode=["updates", "custom"], durability="sync")
    for mode, chunk in stream:
        if mode == "updates" and "__interrupt__" in chunk:
            continue  # reported by the park, with the interrupts' ids
        kind = "update" if mode == "updates" else "custom"
        data = jsonable(chunk)
        event = data if isinstance(data, dict) else {"value": data}
        if rt.joblog.append(order.job_id, order.epoch, [(kind, event)]):
            raise _Stopped()


def _final(entry: Handler, values: Any) -> AgentOutcome:
    result = jsonable(values)
    if entry.output is not None and isinstance(result, dict):
        result = result.get(entry.output)
    return AgentOutcome(JobStatus.COMPLETED, result=result)
