"""Agents: task types whose work is a LangGraph graph, checkpointed in Redis step by step.

An agent is a function that returns a LangGraph ``StateGraph`` builder, uncompiled::

    from typing import TypedDict
    from langgraph.graph import END, START, StateGraph
    from langgraph.types import interrupt
    from pydantic import BaseModel
    from project.worker import agent

    class Ask(BaseModel):
        question: str

    class State(TypedDict, total=False):
        question: str
        answer: str

    def draft(state: State) -> State:
        return {"answer": f"draft for {state['question']}"}

    def approve(state: State) -> State:
        verdict = interrupt({"proposed": state["answer"]})  # waits for resume_job
        return {"answer": state["answer"] if verdict == "yes" else "declined"}

    @agent("ask", payload=Ask, output="answer", description="Answers, with approval")
    def ask() -> StateGraph:
        graph = StateGraph(State)
        graph.add_node("draft", draft)
        graph.add_node("approve", approve)
        graph.add_edge(START, "draft")
        graph.add_edge("draft", "approve")
        graph.add_edge("approve", END)
        return graph

The worker compiles the builder once per process with :class:`RedisSaver` (thread id =
job id) and runs the validated payload (as a dict) through it. Every super-step is a
checkpoint, so a job whose worker dies resumes elsewhere from its last step. The job's
result is the final state as JSON, or its ``output`` key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from project.worker.handlers import Handler, RetryPolicy, register

GraphFactory = Callable[[], Any]
"""Returns a LangGraph ``StateGraph`` builder, uncompiled."""


def agent(
    task_type: str,
    *,
    payload: type[BaseModel],
    description: str = "",
    tags: tuple[str, ...] = (),
    output: str | None = None,
    retry: RetryPolicy | None = None,
    time_limit_s: float | None = None,
    types: tuple[type, ...] = (),
) -> Callable[[GraphFactory], GraphFactory]:
    """Register the graph ``fn`` builds as the agent of ``task_type``.

    Args:
        task_type: The task type (the A2A skill id).
        payload: Validates the job's payload; the graph's input is its ``model_dump()``.
        description: What the agent does (default: the function's docstring).
        tags: Skill tags shown in the registry and the A2A card.
        output: The state key whose value is the job's result (default: the whole state).
        retry: Retries a run that raised one of its exceptions, from the last checkpoint.
        time_limit_s: A run longer than this fails with JobTimeLimitError.
        types: Classes the state holds beyond LangGraph's msgpack allowlist (e.g.
            LangChain message classes); the checkpointer deserializes nothing else.
    """

    def add(fn: GraphFactory) -> GraphFactory:
        register(
            Handler(
                task_type,
                fn,
                payload,
                description or (fn.__doc__ or ""),
                tags,
                kind="agent",
                retry=retry,
                time_limit_s=time_limit_s,
                output=output,
                types=types,
            )
        )
        return fn

    return add
