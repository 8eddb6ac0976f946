"""What-if patches for the benchmark: measure a proposed change before making it.

Never for production. ``tools.bench.bench`` loads this module into ours' agent
processes (through ``AGENTS_HANDLER_MODULES``, which every agent process imports
before its pool forks) when asked for experiments; ``BENCH_EXPERIMENTS`` names
the patches to apply, comma separated:

* ``argsrepr``: give every ``send_task`` of ours a short ``argsrepr`` so Celery
  does not ``saferepr`` the envelope for its logs and events;
(``direct``, ``no_event``, ``no_replay_rt`` and ``cached_loads`` are gone with what
they measured: the hops are plain functions, the final EVENT rides in the job-finish
script, the job record decides replays, and worker loads are cached.)
"""

from __future__ import annotations

import os
from typing import Any

ENV = "BENCH_EXPERIMENTS"


def _apply(names: set[str]) -> None:
    from project.core.celery_app import app

    unknown = names - {"argsrepr"}
    if unknown:
        raise ValueError(f"unknown bench experiments: {sorted(unknown)}")
    if "argsrepr" in names:
        send_task = app.send_task

        def patched(name: str, *args: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("argsrepr", "(envelope)")
            kwargs.setdefault("kwargsrepr", "{}")
            return send_task(name, *args, **kwargs)

        app.send_task = patched


_apply({n.strip() for n in os.environ.get(ENV, "").split(",") if n.strip()})
