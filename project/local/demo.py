"""``make demo``: an embedded Redis and every tier, a workload of every task type, a few
agent jobs a person approves, declines or cancels, and a summary."""

from __future__ import annotations

import os
import random
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from project.local.deployment import LocalDeployment
from project.local.embedded_redis import EmbeddedRedis, child_env
from project.local.topology import default_topology

if TYPE_CHECKING:
    from celery import Celery
    from celery.result import AsyncResult

    from project.core.runtime import Runtime

DEMO_KEYS = "demo-k1:" + "d" * 48
AGENT_WAIT_S = 60.0
"""How long the demo waits for an agent job to ask for approval, or to finish."""


@dataclass(frozen=True)
class AgentScenario:
    """One ``assistant`` job of the demo and what its reviewer does with the draft."""

    name: str
    request: str
    proposed: str
    """The draft the agent must propose for approval."""
    answer: object
    """The ``resume_job`` value; None: the reviewer cancels the job instead."""
    expect: str | None
    """The job's result; None: it ends canceled (``.get()`` raises JobCanceledError)."""


DECLINED = "Declined: the reviewer did not approve this answer."
AGENT_SCENARIOS = (
    AgentScenario(
        "approved",
        "What is 12 * 3.5, and the price of a widget?",
        "12 * 3.5 = 42; widget = 2.50 EUR",
        {"approved": True},
        "12 * 3.5 = 42; widget = 2.50 EUR",
    ),
    AgentScenario("approved (yes)", "What is 100 / 8?", "100 / 8 = 12.5", "yes", "100 / 8 = 12.5"),
    AgentScenario(
        "declined",
        "What is the price of a gadget?",
        "gadget = 12.00 EUR",
        {"approved": False, "reason": "Ask finance."},
        f"{DECLINED} Ask finance.",
    ),
    AgentScenario("canceled", "What is 7 + 5?", "7 + 5 = 12", None, None),
)


@dataclass(frozen=True)
class AgentOutcome:
    """How an agent job of the demo ended."""

    scenario: AgentScenario
    job_id: str
    status: str
    shown: str
    """Its result, or its error."""
    events: int
    """Events in its log."""
    ok: bool


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
    """Run the demo; return the process exit code (0 if every job completed correctly and
    every agent job ended as its scenario says)."""
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
        from celery import Celery

        from project.client import submit_many
        from project.core.celery_app.config import celery_config
        from project.core.runtime import Runtime
        from project.core.settings import Settings

        # The demo's own client and job API on the embedded Redis, whatever this
        # process's default app was configured with.
        settings = Settings(redis_url=server.url)
        rt = Runtime(settings)
        client = Celery("demo-client", set_as_current=False)
        client.conf.update(celery_config(settings))
        deployment = LocalDeployment(
            default_topology(distributors=2, beat=True),
            env=env,
            log_dir=root / "logs",
            workdir=root,
        )
        with deployment:
            deployment.wait_ready(timeout_s=90)
            console.print(
                f"demo: {len(deployment.processes)} processes up; submitting "
                f"{len(AGENT_SCENARIOS)} agent jobs and {jobs} jobs"
            )
            agents_started = time.perf_counter()
            agent_jobs = submit_many(
                [
                    {"task_type": "assistant", "payload": {"request": s.request}}
                    for s in AGENT_SCENARIOS
                ],
                celery_app=client,
                store=rt.jobs,
            )
            workload = demo_jobs(jobs)
            started = time.perf_counter()
            results = submit_many(
                ({k: v for k, v in job.items() if k != "expect"} for job in workload),
                celery_app=client,
                store=rt.jobs,
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
            records = [rt.jobs.get(r.id) for r in results]
            assignees = Counter(record.assignee if record else "?" for record in records)
            agent_outcomes = [
                steer_agent(rt, client, scenario, result, console)
                for scenario, result in zip(AGENT_SCENARIOS, agent_jobs, strict=True)
            ]
            agents_elapsed = time.perf_counter() - agents_started
            client.close()
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
        console.print(agent_table(agent_outcomes, agents_elapsed))
    completed = outcomes["completed"]
    agents_ok = sum(outcome.ok for outcome in agent_outcomes)
    print(
        f"demo: {completed}/{jobs} jobs completed; "
        f"{agents_ok}/{len(agent_outcomes)} agent jobs ended as expected",
        flush=True,
    )
    return 0 if completed == jobs and agents_ok == len(agent_outcomes) else 1


def steer_agent(
    rt: Runtime, client: Celery, scenario: AgentScenario, result: AsyncResult, console: Console
) -> AgentOutcome:
    """Follow an agent job to its approval step, answer or cancel it as ``scenario`` says,
    and check how it ends. Never raises: a failure is an outcome that is not ok."""
    from project.core import control
    from project.core.errors import JobCanceledError
    from project.core.models import JobStatus

    try:
        for event in control.events(rt, result.id, block_s=AGENT_WAIT_S):
            if event.is_final or event.data.get("status") == JobStatus.INPUT_REQUIRED:
                break
        view = control.view(rt, result.id)
        if view.status is not JobStatus.INPUT_REQUIRED:
            raise RuntimeError(f"expected it to wait for approval, it is {view.status.value}")
        proposed = [i.value.get("proposed") for i in view.interrupts if isinstance(i.value, dict)]
        asked = f"demo: agent job {result.id[:8]} asks to approve {', '.join(map(repr, proposed))}"
        if scenario.answer is None:
            outcome = control.cancel(rt, result.id, celery_app=client)
            done = "cancel_job: " + ("canceled" if outcome.canceled else outcome.message)
        else:
            control.resume(rt, result.id, scenario.answer, celery_app=client)
            done = f"resume_job: {scenario.answer!r}"
        console.print(f"{asked}; {done}", markup=False)
        try:
            value: Any = result.get(timeout=AGENT_WAIT_S)
            shown = str(value)
        except JobCanceledError:
            value, shown = None, "JobCanceledError"
        final = control.view(rt, result.id)
        expected_status = JobStatus.CANCELED if scenario.expect is None else JobStatus.COMPLETED
        ok = (
            proposed == [scenario.proposed]
            and value == scenario.expect
            and final.status is expected_status
        )
        status = final.status.value
    except Exception as exc:  # report every failure, keep going
        status, shown, ok = "?", f"{type(exc).__name__}: {exc}", False
    logged = list(control.events(rt, result.id, block_s=1))
    return AgentOutcome(scenario, result.id, status, shown, len(logged), ok)


def agent_table(outcomes: list[AgentOutcome], elapsed_s: float) -> Table:
    """The agent jobs' part of the summary."""
    table = Table(title=f"agent jobs (assistant; {elapsed_s:.2f} s from submit to the last end)")
    for column in ("job", "reviewer", "status", "result / error", "events", "ok"):
        table.add_column(column, justify="right" if column == "events" else "left")
    for outcome in outcomes:
        table.add_row(
            outcome.job_id[:8],
            outcome.scenario.name,
            outcome.status,
            escape(outcome.shown),
            str(outcome.events),
            "yes" if outcome.ok else "[red]NO[/]",
        )
    return table
