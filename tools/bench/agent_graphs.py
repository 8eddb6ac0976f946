"""The agent the agents benchmark runs (workers load it via AGENTS_HANDLER_MODULES)."""

from __future__ import annotations

import time
from typing import Any, TypedDict

from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from pydantic import BaseModel, Field

from project.worker.agents import agent

MAX_STEPS = 50


class BenchSteps(BaseModel):
    steps: int = Field(default=10, ge=1, le=MAX_STEPS)
    sleep_s: float = 0.0


class BenchState(TypedDict, total=False):
    steps: int
    sleep_s: float
    at: int


def _step(i: int) -> Any:
    def run(state: BenchState) -> BenchState:
        get_stream_writer()({"i": i, "at": time.time()})
        if state.get("sleep_s"):
            time.sleep(state["sleep_s"])
        return {"at": i}

    return run


def _next(i: int) -> Any:
    return lambda state: END if i == MAX_STEPS - 1 or state["steps"] <= i + 1 else f"s{i + 1}"


def build(steps: int = MAX_STEPS) -> StateGraph:
    """A chain of steps; each writes one custom event with its wall-clock time."""
    graph = StateGraph(BenchState)
    graph.add_edge(START, "s0")
    for i in range(steps):
        graph.add_node(f"s{i}", _step(i))
        graph.add_conditional_edges(f"s{i}", _next(i))
    return graph


agent("bench_steps", payload=BenchSteps, output="at")(build)
