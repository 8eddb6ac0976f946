"""What-if patches for the benchmark: measure a proposed change before making it.

Never for production. ``tools.bench.bench`` loads this module into ours' agent
processes (through ``AGENTS_HANDLER_MODULES``, which every agent process imports
before its pool forks) when asked for experiments; ``BENCH_EXPERIMENTS`` names
the patches to apply, comma separated:

* ``argsrepr``: give every ``send_task`` of ours a short ``argsrepr`` so Celery
  does not ``saferepr`` the envelope for its logs and events;
* ``no_replay_rt``: skip the separate replay claim and finish round trips (an
  upper bound of folding them into the job records' Lua scripts);
* ``cached_loads``: read worker loads for least-busy routing at most every 100 ms.

(``direct`` and ``no_event`` are gone with what they measured: the hops are plain
functions now, and the final EVENT rides in the job-finish script, not a task.)
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

ENV = "BENCH_EXPERIMENTS"


def _apply(names: set[str]) -> None:
    from project.core.a2a.replay import ReplayGuard
    from project.core.celery_app import app
    from project.core.state.registry import AgentRegistry

    unknown = names - {"argsrepr", "no_replay_rt", "cached_loads"}
    if unknown:
        raise ValueError(f"unknown bench experiments: {sorted(unknown)}")
    if "argsrepr" in names:
        send_task = app.send_task

        def patched(name: str, *args: Any, **kwargs: Any) -> Any:
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
