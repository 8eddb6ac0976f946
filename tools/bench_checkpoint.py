"""Benchmark RedisSaver against InMemorySaver on a 10-step LangGraph graph.

Starts a private redis-server (like tests/conftest.py, with AOF ``appendfsync always`` unless
``--no-aof``), runs the graph ``--runs`` times per checkpointer (each run on a new thread id,
as each job would) and prints milliseconds per step and, for RedisSaver, Redis commands per
step from ``INFO commandstats`` deltas: round trips (top-level EVALSHA/EVAL) and every command
Redis executed, including those inside the Lua scripts.

Usage: ``.venv/bin/python tools/bench_checkpoint.py [--runs 200] [--steps 10] [--no-aof]``
"""

from __future__ import annotations

import argparse
import operator
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Annotated, Any, TypedDict

import redis
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from project.core.checkpoint import RedisSaver

try:  # the module is being moved; both homes are tried
    from project.local.embedded_redis import EmbeddedRedis
except ImportError:  # pragma: no cover
    from project.ops.embedded_redis import EmbeddedRedis  # type: ignore[no-redef]

WARMUP = 5


class State(TypedDict):
    n: int
    document: str
    trail: Annotated[list[int], operator.add]


def build(
    checkpointer: BaseCheckpointSaver[Any] | None, steps: int
) -> CompiledStateGraph[Any, Any, Any, Any]:
    """``steps`` nodes in a row; each bumps ``n`` and appends to ``trail``."""
    builder = StateGraph(State)
    previous = START
    for i in range(steps):
        builder.add_node(f"step{i}", lambda s: {"n": s["n"] + 1, "trail": [s["n"]]})
        builder.add_edge(previous, f"step{i}")
        previous = f"step{i}"
    builder.add_edge(previous, END)
    return builder.compile(checkpointer=checkpointer)


def command_calls(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def run(graph: CompiledStateGraph[Any, Any, Any, Any], runs: int, steps: int) -> float:
    """Seconds per step over ``runs`` invocations (after a short warm-up)."""
    start_state = {"n": 0, "document": "x" * 1024, "trail": []}
    for _ in range(WARMUP):
        graph.invoke(start_state, {"configurable": {"thread_id": f"warm-{uuid.uuid4()}"}})
    began = time.perf_counter()
    for _ in range(runs):
        result = graph.invoke(start_state, {"configurable": {"thread_id": f"job-{uuid.uuid4()}"}})
        assert result["n"] == steps
    return (time.perf_counter() - began) / (runs * steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--no-aof", action="store_true", help="no AOF (default: fsync always)")
    options = parser.parse_args()
    runs, steps = options.runs, options.steps

    with tempfile.TemporaryDirectory() as folder:
        server = EmbeddedRedis(Path(folder), appendonly=not options.no_aof).start()
        try:
            client = redis.Redis(port=server.port)
            version = client.info("server")["redis_version"]
            print(f"redis-server {version}, AOF {'off' if options.no_aof else 'fsync always'}")
            print(f"{runs} runs x {steps} steps (+{WARMUP} warm-up runs), one thread per run\n")

            baseline = run(build(None, steps), runs, steps)
            memory = run(build(InMemorySaver(), steps), runs, steps)

            saver = RedisSaver(client)
            graph = build(saver, steps)
            graph.invoke(
                {"n": 0, "document": "", "trail": []}, {"configurable": {"thread_id": "load"}}
            )
            before = command_calls(client)
            redis_s = run(graph, runs, steps)
            after = command_calls(client)
            delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
            delta.pop("info", None)
            total = sum(delta.values())
            trips = delta.get("evalsha", 0) + delta.get("eval", 0)
            per_step = (runs + WARMUP) * steps

            print(f"{'checkpointer':<16}{'ms/step':>10}{'round trips/step':>18}{'cmds/step':>11}")
            print(f"{'none':<16}{baseline * 1000:>10.3f}{'-':>18}{'-':>11}")
            print(f"{'InMemorySaver':<16}{memory * 1000:>10.3f}{'-':>18}{'-':>11}")
            print(
                f"{'RedisSaver':<16}{redis_s * 1000:>10.3f}"
                f"{trips / per_step:>18.2f}{total / per_step:>11.2f}"
            )
            top = sorted(delta.items(), key=lambda kv: -kv[1])
            print("\nRedisSaver commands per step (incl. inside Lua):")
            print("  " + ", ".join(f"{k} {v / per_step:.2f}" for k, v in top if v))
            client.close()
        finally:
            server.stop()


if __name__ == "__main__":
    main()
