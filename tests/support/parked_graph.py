"""A two-step graph that parks at an interrupt, compiled on a given checkpointer: for
tests that check a thread parks in Redis and resumes through another client."""

from __future__ import annotations

from typing import Any, TypedDict

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import interrupt


class Parked(TypedDict, total=False):
    n: int
    answer: str


def parked_graph(saver: BaseCheckpointSaver[Any], question: str | None = None) -> Any:
    """add (n + 1) -> ask (interrupts with ``{"n": n}``, plus ``question`` if given) -> end."""

    def add(state: Parked) -> Parked:
        return {"n": state.get("n", 0) + 1}

    def ask(state: Parked) -> Parked:
        value: dict[str, Any] = {"n": state["n"]}
        if question is not None:
            value = {"question": question, **value}
        return {"answer": interrupt(value)}

    graph = StateGraph(Parked)
    graph.add_node("add", add)
    graph.add_node("ask", ask)
    graph.add_edge(START, "add")
    graph.add_edge("add", "ask")
    graph.add_edge("ask", END)
    return graph.compile(checkpointer=saver)
