"""``make bench-agents``: what an agent job costs, and how it recovers, on real processes.

Starts a private redis-server and a deployment (coordinator, distributor, workers w1 and
w2, beat) whose workers run ``bench_steps`` (``tools/bench/agent_graphs.py``): a chain of
steps, each writing one custom event. It measures:

* **cost per step, end to end**: the same agent run as 1-step and as 41-step jobs, one
  at a time; ``(t41 - t1) / 40`` is the time one more step adds (checkpoint, pending
  writes, event-log append, LangGraph itself), and ``INFO commandstats`` gives the Redis
  commands and round trips (``total_reads_processed``) one step adds;
* **checkpoint cost per step, in process**: the same graph invoked here, with LangGraph's
  ``InMemorySaver`` (baseline) and with our ``RedisSaver`` with its epoch fence, on the
  same Redis: ms per step of each, the difference is what the Redis checkpoint costs;
* **event-log latency**: node -> subscriber, for every custom event of a few jobs followed
  with ``job_events`` from this process (the node stamps its wall clock; same machine);
* **recovery**: a 10-step agent (0.3 s a step) whose worker is SIGKILLed after its third
  step: the time from the kill to the agent's next step running on another worker, and
  which steps ran twice. Three rounds, the killed worker restarted in between.

Run: ``python -m tools.bench.agents`` (about two minutes). Figures in the README.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from celery import Celery
from langgraph.checkpoint.memory import InMemorySaver
from rich.console import Console
from rich.table import Table

from project.client import submit_many
from project.core import control
from project.core.celery_app.config import celery_config
from project.core.checkpoint import FENCE, RedisSaver
from project.core.constants import KEY_JOB
from project.core.runtime import Runtime
from project.core.settings import Settings
from project.core.state.connections import connect_redis
from project.local.deployment import LocalDeployment
from project.local.embedded_redis import EmbeddedRedis, child_env
from project.local.topology import default_topology
from tools.bench.agent_graphs import build
from tools.bench.bench import BENCH_KEYS, _machine, percentile

TOOLS_PATH = str(Path(__file__).resolve().parents[2])


class Bench:
    def __init__(self, redis_url: str, deployment: LocalDeployment) -> None:
        self.deployment = deployment
        self.settings = Settings(redis_url=redis_url)
        self.rt = Runtime(self.settings)
        self.redis = self.rt.redis
        self.client = Celery("bench-agents", set_as_current=False)
        self.client.conf.update(celery_config(self.settings))

    def submit(self, steps: int, sleep_s: float = 0.0) -> Any:
        job = {"task_type": "bench_steps", "payload": {"steps": steps, "sleep_s": sleep_s}}
        return submit_many([job], celery_app=self.client, store=self.rt.jobs)[0]

    def stats(self) -> tuple[int, int]:
        """(commands so far, reads so far) of the Redis server."""
        info = self.redis.info("commandstats")
        calls = sum(int(v["calls"]) for v in info.values())
        return calls, int(self.redis.info("stats")["total_reads_processed"])


def per_step_end_to_end(bench: Bench, rounds: int) -> dict[str, float]:
    def run(steps: int) -> tuple[float, float, float]:
        times: list[float] = []
        bench.redis.config_resetstat()
        before = bench.stats()
        for _ in range(rounds):
            started = time.perf_counter()
            bench.submit(steps).get(timeout=60)
            times.append(time.perf_counter() - started)
        after = bench.stats()
        return (
            statistics.median(times) * 1000,
            (after[0] - before[0]) / rounds,
            (after[1] - before[1]) / rounds,
        )

    for _ in range(5):
        bench.submit(3).get(timeout=60)  # warm up every pool child
    short, long_ = run(1), run(41)
    return {
        "ms_per_step": (long_[0] - short[0]) / 40,
        "redis_commands_per_step": (long_[1] - short[1]) / 40,
        "round_trips_per_step": (long_[2] - short[2]) / 40,
        "job_1_step_ms": short[0],
        "job_41_steps_ms": long_[0],
    }


def per_step_in_process(bench: Bench, rounds: int) -> dict[str, float]:
    steps = 40
    fence_key = KEY_JOB + "bench-fence"
    bench.redis.hset(fence_key, mapping={"epoch": 1, "status": "IN_PROGRESS"})

    def run(saver: Any, fenced: bool) -> float:
        graph = build(steps).compile(checkpointer=saver)
        samples = []
        for n in range(rounds):
            configurable: dict[str, Any] = {"thread_id": f"bench-{id(saver)}-{n}"}
            if fenced:
                configurable[FENCE] = [fence_key, 1]
            started = time.perf_counter()
            graph.invoke({"steps": steps}, {"configurable": configurable})
            samples.append((time.perf_counter() - started) / steps * 1000)
        return statistics.median(samples)

    memory = run(InMemorySaver(), False)
    redis_saver = RedisSaver(connect_redis(bench.settings.redis_url))
    bench.redis.config_resetstat()
    before = bench.stats()
    ours = run(redis_saver, True)
    after = bench.stats()
    return {
        "in_memory_ms_per_step": memory,
        "redis_saver_ms_per_step": ours,
        "checkpoint_ms_per_step": ours - memory,
        "checkpoint_commands_per_step": (after[0] - before[0]) / (rounds * steps),
        "checkpoint_round_trips_per_step": (after[1] - before[1]) / (rounds * steps),
    }


def event_latency(bench: Bench, jobs: int) -> dict[str, float]:
    samples: list[float] = []
    for _ in range(jobs):
        result = bench.submit(20, sleep_s=0.01)
        for event in control.events(bench.rt, result.id, block_s=30):
            if event.kind == "custom":
                samples.append((time.time() - float(event.data["at"])) * 1000)  # type: ignore[arg-type]
        result.get(timeout=30)
    samples.sort()
    return {
        "events": len(samples),
        "p50_ms": percentile(samples, 0.5),
        "p95_ms": percentile(samples, 0.95),
        "max_ms": samples[-1],
    }


def recovery(bench: Bench, rounds: int, console: Console) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for _ in range(rounds):
        result = bench.submit(10, sleep_s=0.3)
        seen: list[tuple[int, float, int]] = []  # (step, at, epoch)
        victim = ""
        killed_at = 0.0
        for event in control.events(bench.rt, result.id, block_s=60):
            if event.kind == "status" and event.data.get("status") == "IN_PROGRESS":
                epoch = int(event.data["epoch"])  # type: ignore[arg-type]
            if event.kind == "custom":
                seen.append((int(event.data["i"]), float(event.data["at"]), epoch))  # type: ignore[arg-type]
                if len(seen) == 3 and not victim:
                    record = bench.rt.jobs.get(result.id)
                    assert record is not None
                    victim = record.assignee
                    killed_at = time.time()
                    bench.deployment.kill(victim)
        result.get(timeout=60)
        after = [at for _, at, e in seen if e > 1]
        steps = [i for i, _, _ in seen]
        record = bench.rt.jobs.get(result.id)
        found.append(
            {
                "killed": victim,
                "resumed_on": record.assignee if record else "?",
                "kill_to_running_again_ms": (after[0] - killed_at) * 1000 if after else None,
                "steps_run_twice": sorted({i for i in steps if steps.count(i) > 1}),
                "final_status": record.status.value if record else "?",
            }
        )
        bench.deployment.start([victim])
        bench.deployment.wait_ready(timeout_s=60)
        console.log(f"recovery round: {found[-1]}")
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="jobs per timing")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs")
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    started = dt.datetime.now(dt.UTC)
    tmp = tempfile.mkdtemp(prefix="bench-agents-")
    try:
        redis = EmbeddedRedis(Path(tmp) / "redis", appendonly=False).start()
        url = redis.url
        os.environ.update(AGENTS_REDIS_URL=url, AGENTS_A2A_KEYS=BENCH_KEYS, AGENTS_DEV_MODE="false")
        env = child_env(
            AGENTS_REDIS_URL=url,
            AGENTS_HANDLER_MODULES="tools.bench.agent_graphs",
            AGENTS_HEARTBEAT_INTERVAL_S="0.5",
            AGENTS_HEARTBEAT_TIMEOUT_S="3",
            AGENTS_HEALTH_CHECK_INTERVAL_S="1",
            PYTHONPATH=TOOLS_PATH,
        )
        topology = default_topology(workers=("w1", "w2"), distributors=1, beat=True)
        deployment = LocalDeployment(topology, env=env, log_dir=Path(tmp), workdir=Path(tmp))
        try:
            deployment.start()
            deployment.wait_ready(timeout_s=120)
            bench = Bench(url, deployment)
            report = {
                "date": started.isoformat(timespec="seconds"),
                "machine": _machine(),
                "per_step_end_to_end": per_step_end_to_end(bench, args.rounds),
                "per_step_in_process": per_step_in_process(bench, args.rounds),
                "event_latency": event_latency(bench, args.rounds),
                "recovery": recovery(bench, 3, console),
            }
        finally:
            deployment.stop()
            redis.stop()
    finally:
        if not args.keep_logs:
            shutil.rmtree(tmp, ignore_errors=True)
    print_report(report, Console())
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


def print_report(report: dict[str, Any], console: Console) -> None:
    table = Table(title=f"Agents on Celery + Redis, {report['date']}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for section in ("per_step_end_to_end", "per_step_in_process", "event_latency"):
        for name, value in report[section].items():
            table.add_row(
                f"{section}: {name}", f"{value:.2f}" if isinstance(value, float) else str(value)
            )
    for n, round_ in enumerate(report["recovery"], 1):
        table.add_row(f"recovery {n}", json.dumps(round_))
    console.print(table)
    console.print(f"machine: {report['machine']}")


if __name__ == "__main__":
    sys.exit(main())
