"""The coordinator's supervisor cycle, a LangGraph graph run once per beat.

    assess -> decide -> re-route | re-send | escalate -> report

``assess`` takes the cycle's short lease (two beats never double-act), marks
silent agents dead and gathers what needs doing; ``decide`` picks the branches
that have work; each branch acts; ``report`` records what the cycle did. The
graph is compiled once per process and runs once per beat, never per message.
The checks themselves are in :mod:`project.coordinator.health`.
"""

from __future__ import annotations

import logging
import operator
from functools import cache
from typing import Annotated, Any, TypedDict

from langgraph.graph import END, START, StateGraph

from project.coordinator import health
from project.coordinator.health import Findings, HealthReport
from project.core.control import fail_waiting
from project.core.runtime import Runtime

log = logging.getLogger("project.coordinator.supervisor")

REROUTE = "reroute"
RESEND = "resend"
ESCALATE = "escalate"


class CycleState(TypedDict, total=False):
    """What flows through one supervisor cycle."""

    runtime: Runtime
    """The coordinator's runtime, passed in once per cycle."""
    ran: bool
    """False if another beat holds this interval's lease: nothing else runs."""
    findings: Findings
    """What ``assess`` found to do."""
    rerouted: Annotated[list[str], operator.add]
    resent: Annotated[list[str], operator.add]
    escalated: Annotated[list[str], operator.add]
    input_timeouts: Annotated[list[str], operator.add]
    drained_messages: Annotated[int, operator.add]
    restored_messages: Annotated[int, operator.add]


def _assess(state: CycleState) -> dict[str, Any]:
    findings = health.assess(state["runtime"])
    return {"ran": findings is not None, "findings": findings}


def decide(state: CycleState) -> list[str]:
    if not state.get("ran"):
        return [END]
    findings: Findings = state["findings"]
    branches = [RESEND]  # resending also restores orphaned tier messages: every cycle
    if findings.reroutes:
        branches.append(REROUTE)
    if findings.unserved_task_types:
        branches.append(ESCALATE)
    return branches


def _reroute(state: CycleState) -> dict[str, Any]:
    rerouted, drained = health.reroute(state["runtime"], state["findings"])
    return {"rerouted": rerouted, "drained_messages": drained}


def _resend(state: CycleState) -> dict[str, Any]:
    resent, restored = health.resend(state["runtime"], state["findings"])
    timed_out = fail_waiting(state["runtime"])  # agents that waited too long for input
    return {"resent": resent, "restored_messages": restored, "input_timeouts": timed_out}


def _escalate(state: CycleState) -> dict[str, Any]:
    return {"escalated": health.escalate(state["runtime"], state["findings"])}


def _report(state: CycleState) -> dict[str, Any]:
    health.report(state["runtime"], _health_report(state))
    return {}


def _health_report(state: CycleState) -> HealthReport:
    findings: Findings | None = state.get("findings")
    return HealthReport(
        ran=bool(state.get("ran")),
        newly_dead=list(findings.newly_dead) if findings else [],
        rerouted=list(state.get("rerouted", [])),
        resent_stuck=list(state.get("resent", [])),
        escalated=list(state.get("escalated", [])),
        input_timeouts=list(state.get("input_timeouts", [])),
        drained_messages=int(state.get("drained_messages", 0)),
        restored_messages=int(state.get("restored_messages", 0)),
    )


@cache
def supervisor_graph() -> Any:
    """The compiled supervisor graph (built once per process)."""
    graph = StateGraph(CycleState)
    graph.add_node("assess", _assess)
    graph.add_node(REROUTE, _reroute)
    graph.add_node(RESEND, _resend)
    graph.add_node(ESCALATE, _escalate)
    graph.add_node("report", _report)
    graph.add_edge(START, "assess")
    graph.add_conditional_edges("assess", decide, [REROUTE, RESEND, ESCALATE, END])
    graph.add_edge(REROUTE, "report")
    graph.add_edge(RESEND, "report")
    graph.add_edge(ESCALATE, "report")
    return graph.compile(name="coordinator.supervisor")


def run_supervisor_cycle(rt: Runtime) -> HealthReport:
    """Run one supervisor cycle and return what it did."""
    final: CycleState = supervisor_graph().invoke({"runtime": rt})
    return _health_report(final)
