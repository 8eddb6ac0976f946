"""Agents loaded by test workers through AGENTS_HANDLER_MODULES (``graph_agents``).

Each step counts its runs in Redis (hash ``test:steps:{job id}``, field = node name), so
tests can tell exactly which steps ran and how often.
"""

from __future__ import annotations

import os
import time
from typing import Any, TypedDict

import redis
from celery.exceptions import SoftTimeLimitExceeded
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.types import interrupt
from pydantic import BaseModel, Field

from project.worker import RetryPolicy, agent, current_job, handler


def _redis() -> redis.Redis:
    return redis.Redis.from_url(os.environ["AGENTS_REDIS_URL"], decode_responses=True)


def count_step(name: str) -> None:
    """Count one run of step ``name`` of the current job."""
    _redis().hincrby(f"test:steps:{current_job().job_id}", name, 1)


class Steps(BaseModel):
    steps: int = Field(default=3, ge=1, le=20)
    sleep_s: float = 0.0


class StepsState(TypedDict, total=False):
    steps: int
    sleep_s: float
    done: list[int]


def _step(i: int) -> Any:
    def run(state: StepsState) -> StepsState:
        count_step(f"s{i}")
        get_stream_writer()({"step": i, "at_ms": time.time() * 1000})
        time.sleep(state.get("sleep_s", 0.0))
        return {"done": [*state.get("done", []), i]}

    return run


@agent("steps", payload=Steps, output="done", description="Runs N counted steps", tags=("test",))
def steps_agent() -> StateGraph:
    """A chain of 20 counted steps; the payload's ``steps`` says how many run."""
    graph = StateGraph(StepsState)
    graph.add_edge(START, "s0")
    for i in range(20):
        graph.add_node(f"s{i}", _step(i))
        graph.add_conditional_edges(f"s{i}", _next_step(i))
    return graph


def _next_step(i: int) -> Any:
    return lambda state: END if i == 19 or state["steps"] <= i + 1 else f"s{i + 1}"


class Approval(BaseModel):
    text: str
    questions: int = Field(default=1, ge=1, le=3)


class ApprovalState(TypedDict, total=False):
    text: str
    questions: int
    answers: list[Any]


def _ask(state: ApprovalState) -> ApprovalState:
    count_step("ask")
    answers = [
        interrupt({"question": f"approve {state['text']}?", "n": n})
        for n in range(state["questions"])
    ]
    return {"answers": answers}


def _finish(state: ApprovalState) -> ApprovalState:
    count_step("finish")
    return {}


@agent("approval", payload=Approval, description="Asks for approval", tags=("test",))
def approval_agent() -> StateGraph:
    """Asks ``questions`` questions in one node, then finishes."""
    graph = StateGraph(ApprovalState)
    graph.add_node("ask", _ask)
    graph.add_node("finish", _finish)
    graph.add_edge(START, "ask")
    graph.add_edge("ask", "finish")
    graph.add_edge("finish", END)
    return graph


class Flaky(BaseModel):
    failures: int = 2


class TransientError(Exception):
    """What a rate-limited model call raises."""


class FlakyState(TypedDict, total=False):
    failures: int
    ok: bool


def _flaky(state: FlakyState) -> FlakyState:
    count_step("flaky")
    runs = int(_redis().hget(f"test:steps:{current_job().job_id}", "flaky") or 0)
    if runs <= state["failures"]:
        raise TransientError(f"rate limited (run {runs})")
    return {"ok": True}


@agent(
    "flaky_agent",
    payload=Flaky,
    retry=RetryPolicy(on=(TransientError,), max_retries=3, backoff_s=0.05),
)
def flaky_agent() -> StateGraph:
    """Fails ``failures`` times with a transient error, then succeeds."""
    graph = StateGraph(FlakyState)
    graph.add_node("before", lambda s: count_step("before") or {})
    graph.add_node("flaky", _flaky)
    graph.add_edge(START, "before")
    graph.add_edge("before", "flaky")
    graph.add_edge("flaky", END)
    return graph


@handler(
    "flaky_handler",
    payload=Flaky,
    retry=RetryPolicy(on=(TransientError,), max_retries=3, backoff_s=0.05),
)
def flaky_handler(job: Flaky) -> dict[str, int]:
    """Fails ``failures`` times with a transient error, then succeeds."""
    count_step("flaky")
    runs = int(_redis().hget(f"test:steps:{current_job().job_id}", "flaky") or 0)
    if runs <= job.failures:
        raise TransientError(f"rate limited (run {runs})")
    return {"runs": runs}


class Sleep(BaseModel):
    sleep_s: float


@handler("slow", payload=Sleep, time_limit_s=1.0)
def slow(job: Sleep) -> dict[str, float]:
    """Sleeps; its time limit is one second."""
    count_step("slow")
    time.sleep(job.sleep_s)
    return {"slept": job.sleep_s}


@handler("stubborn", payload=Sleep, time_limit_s=1.0)
def stubborn(job: Sleep) -> dict[str, float]:
    """Ignores its soft time limit and sleeps on: the hard limit stops it."""
    count_step("stubborn")
    try:
        time.sleep(job.sleep_s)
    except SoftTimeLimitExceeded:
        time.sleep(job.sleep_s)
    return {"slept": job.sleep_s}
