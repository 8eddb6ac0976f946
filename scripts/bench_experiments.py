"""What-if patches for the benchmark: measure a proposed change before making it.

Never for production. ``project.ops.bench`` loads this module into ours' agent
processes (through ``AGENTS_HANDLER_MODULES``, which every agent process imports
before its pool forks) when asked for experiments; ``BENCH_EXPERIMENTS`` names
the patches to apply, comma separated:

* ``direct``: run each hop graph's own nodes and branch in order (verify, decide,
  act if decided, report), merging their updates into the state, instead of
  ``CompiledStateGraph.invoke`` (what LangGraph's engine costs per hop);
* ``no_event``: do not send the final EVENT to the coordinator (what that fifth
  Celery task costs);
* ``argsrepr``: give every ``send_task`` of ours a short ``argsrepr`` so Celery
  does not ``saferepr`` the envelope for its logs and events;
* ``no_replay_rt``: skip the separate replay claim and finish round trips (an
  upper bound of folding them into the job records' Lua scripts);
* ``cached_loads``: read worker loads for least-busy routing at most every 100 ms.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

ENV = "BENCH_EXPERIMENTS"


def _direct(graph: Any) -> None:
    nodes = {name: spec.runnable.func for name, spec in graph.builder.nodes.items()}
    verify, decide, act, report = (nodes[n] for n in ("verify", "decide", "act", "report"))

    def invoke(state: dict[str, Any], *_: Any, **__: Any) -> dict[str, Any]:
        state = dict(state)
        state.update(verify(state) or {})
        state.update(decide(state) or {})
        if state.get("decision") == "act":
            state.update(act(state) or {})
        state.update(report(state) or {})
        return state

    graph.invoke = invoke


def _apply(names: set[str]) -> None:
    from project.coordinator import intake
    from project.core.celery_app import app
    from project.core.constants import TASK_JOB_EVENT
    from project.core.registry import AgentRegistry
    from project.core.replay import ReplayGuard
    from project.distributor import dispatch
    from project.worker import execution

    if "direct" in names:
        for graph in (
            intake.SUBMIT_GRAPH,
            intake.EVENT_GRAPH,
            dispatch.ASSIGN_GRAPH,
            dispatch.COMPLETE_GRAPH,
            execution.EXECUTE_GRAPH,
        ):
            _direct(graph)
    if names & {"no_event", "argsrepr"}:
        send_task = app.send_task

        def patched(name: str, *args: Any, **kwargs: Any) -> Any:
            if "no_event" in names and name == TASK_JOB_EVENT:
                return None
            if "argsrepr" in names:
                kwargs.setdefault("argsrepr", "(envelope)")
                kwargs.setdefault("kwargsrepr", "{}")
            return send_task(name, *args, **kwargs)

        app.send_task = patched
    if "no_replay_rt" in names:
        ReplayGuard.claim = lambda self, envelope: None  # type: ignore[method-assign]
        ReplayGuard.finish = lambda self, envelope: None  # type: ignore[method-assign]
    if "cached_loads" in names:
        loads = AgentRegistry.loads
        lock = threading.Lock()
        cache: dict[str, Any] = {"at": 0.0, "key": None, "value": {}}

        def cached(self: AgentRegistry, worker_ids: list[str]) -> dict[str, int]:
            with lock:
                key = tuple(worker_ids)
                if key != cache["key"] or time.monotonic() - cache["at"] > 0.1:
                    cache.update(at=time.monotonic(), key=key, value=loads(self, worker_ids))
                value: dict[str, int] = cache["value"]
                return value

        AgentRegistry.loads = cached  # type: ignore[method-assign]


_apply({n.strip() for n in os.environ.get(ENV, "").split(",") if n.strip()})
