"""Each tier handles a message as a compiled LangGraph: verify -> decide -> act -> report.

``decide`` sets ``decision``; only ``"act"`` runs the act node, anything else
(``"drop"``, ``"wait"``, ``"fail"``) goes straight to report. Graphs are built
once per process and invoked per message; node errors propagate unchanged.
"""

from __future__ import annotations

import time
from typing import Any, Protocol, TypedDict

from langgraph.graph import END, START, StateGraph

from project.core import metrics
from project.core.envelope import Envelope
from project.core.errors import A2AError
from project.core.runtime import get_runtime


class HopState(TypedDict, total=False):
    """What flows through one tier's graph for one message."""

    raw: Any
    """The message as it arrived (an envelope dict, or a job spec for intake)."""
    context: dict[str, Any]
    """Task-supplied facts: Celery task id, retry count, delivery info."""
    envelope: Envelope
    """The verified envelope."""
    decision: str
    """``act`` to go on; ``drop``, ``wait`` or ``fail`` to skip to report."""
    outcome: dict[str, Any]
    """What act or decide produced, for report."""
    reply: Any
    """What the Celery task returns."""


class Node(Protocol):
    """A graph node: takes the hop state, returns the keys it updates."""

    def __call__(self, state: HopState) -> dict[str, Any]: ...


def build_hop_graph(name: str, *, verify: Node, decide: Node, act: Node, report: Node) -> Any:
    """Compile a tier's verify -> decide -> act -> report graph."""
    graph = StateGraph(HopState)
    graph.add_node("verify", verify)
    graph.add_node("decide", decide)
    graph.add_node("act", act)
    graph.add_node("report", report)
    graph.add_edge(START, "verify")
    graph.add_edge("verify", "decide")
    graph.add_conditional_edges(
        "decide",
        lambda state: "act" if state.get("decision") == "act" else "report",
        {"act": "act", "report": "report"},
    )
    graph.add_edge("act", "report")
    graph.add_edge("report", END)
    return graph.compile(name=name)


def run_hop(graph: Any, raw: Any, **context: Any) -> HopState:
    """Invoke a compiled hop graph for one message and return its final state."""
    started, outcome = time.perf_counter(), "error"
    try:
        state: HopState = graph.invoke({"raw": raw, "context": context})
        outcome = "ok"
        return state
    finally:
        metrics.observe_hop(str(graph.name), time.perf_counter() - started, outcome)


def run_guarded_hop(graph: Any, raw: Any, *, task_name: str, **context: Any) -> HopState:
    """Run a hop; a refused envelope is counted, logged and re-raised (it never runs)."""
    try:
        return run_hop(graph, raw, **context)
    except A2AError as error:
        get_runtime().count_refusal(error, task_name)
        raise
