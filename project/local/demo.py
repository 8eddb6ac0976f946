"""``make demo``: an embedded Redis and every tier, a workload of every task type, a summary."""

from __future__ import annotations

import os
import random
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from project.local.deployment import LocalDeployment
from project.local.embedded_redis import EmbeddedRedis, child_env
from project.local.topology import default_topology

DEMO_KEYS = "demo-k1:" + "d" * 48


def demo_jobs(count: int, seed: int = 7) -> list[dict[str, Any]]:
    """A mixed workload: compute, data_processing and generic jobs, with their expected result."""
    rng = random.Random(seed)
    jobs: list[dict[str, Any]] = []
    for i in range(count):
        kind = i % 3
        if kind == 0:
            values = [rng.randint(-50, 50) for _ in range(rng.randint(1, 20))]
            jobs.append(
                {
                    "task_type": "compute",
                    "payload": {"operation": "sum", "values": values},
                    "expect": sum(values),
                }
            )
        elif kind == 1:
            records: list[dict[str, Any]] = [
                {"k": rng.choice("abc"), "v": rng.randint(0, 9)} for _ in range(10)
            ]
            totals: Counter[str] = Counter()
            for record in records:
                if record["v"] > 2:
                    totals[record["k"]] += record["v"]
            steps = [
                {"op": "filter", "field": "v", "cmp": "gt", "value": 2},
                {"op": "aggregate", "func": "sum", "field": "v", "group_by": "k"},
            ]
            jobs.append(
                {
                    "task_type": "data_processing",
                    "payload": {"records": records, "steps": steps},
                    "expect": dict(sorted(totals.items())),
                }
            )
        else:
            jobs.append(
                {
                    "task_type": "generic",
                    "payload": {"echo": f"job-{i}", "sleep_s": 0.01},
                    "expect": f"job-{i}",
                    "priority": rng.choice(["urgent", "high", "normal", "low"]),
                }
            )
    return jobs


def run_demo(jobs: int = 300, workdir: Path | None = None, console: Console | None = None) -> int:
    """Run the demo; return the process exit code (0 if every job completed correctly)."""
    console = console or Console()
    root = workdir or Path(tempfile.mkdtemp(prefix="agents-demo-"))
    console.print(f"[bold]demo[/]: starting embedded Redis and every tier (logs in {root})")
    with EmbeddedRedis(root / "redis") as server:
        env = child_env(
            AGENTS_REDIS_URL=server.url,
            AGENTS_A2A_KEYS=DEMO_KEYS,
            AGENTS_DEV_MODE="false",
        )
        os.environ.update(env)  # this process is the app: it submits to the same Redis
        from project.client import submit_many
        from project.core.runtime import get_runtime, reset_runtime

        reset_runtime()
        deployment = LocalDeployment(
            default_topology(distributors=2, beat=True),
            env=env,
            log_dir=root / "logs",
            workdir=root,
        )
        with deployment:
            deployment.wait_ready(timeout_s=90)
            console.print(f"demo: {len(deployment.processes)} processes up; submitting {jobs} jobs")
            workload = demo_jobs(jobs)
            started = time.perf_counter()
            results = submit_many(
                {k: v for k, v in job.items() if k != "expect"} for job in workload
            )
            outcomes: Counter[str] = Counter()
            by_type: Counter[str] = Counter()
            for job, result in zip(workload, results, strict=True):
                try:
                    value = result.get(timeout=120)
                    ok = value.get("result") == job["expect"]
                    outcomes["completed" if ok else "wrong result"] += 1
                    by_type[job["task_type"]] += ok
                except Exception as exc:  # report every failure, keep going
                    outcomes[type(exc).__name__] += 1
            elapsed = time.perf_counter() - started
            store = get_runtime().jobs
            records = [store.get(r.id) for r in results]
            assignees = Counter(record.assignee if record else "?" for record in records)
        table = Table(title="demo summary")
        table.add_column("what")
        table.add_column("value", justify="right")
        for task_type, n in sorted(by_type.items()):
            table.add_row(f"{task_type} completed", str(n))
        for worker, n in sorted(assignees.items()):
            table.add_row(f"jobs run by {worker}", str(n))
        for outcome, n in sorted(outcomes.items()):
            table.add_row(outcome, str(n))
        table.add_row("elapsed", f"{elapsed:.2f} s")
        table.add_row("throughput", f"{jobs / elapsed:.0f} jobs/s")
        console.print(table)
    completed = outcomes["completed"]
    print(f"demo: {completed}/{jobs} jobs completed", flush=True)
    return 0 if completed == jobs else 1
