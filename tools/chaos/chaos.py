"""``make chaos``: a real deployment, a steady stream of jobs, faults and bad inputs, figures.

Starts a private redis-server (AOF, ``appendfsync always``), the coordinator with
beat, two distributors and three workers, each its own process, and pushes a
stream of compute, data_processing and generic jobs (each with a known expected
result) while it

* SIGKILLs a worker, several times (restarting it each time), and measures the
  recovery: the time until every unfinished job it held runs elsewhere or is done;
* SIGKILLs a distributor and restarts it;
* SIGKILLs redis-server and starts it again on the same AOF;
* fills Redis up to ``maxmemory`` (``noeviction``) and keeps it full for a while:
  submits that cannot be recorded fail at the caller, no agent exits, every agent
  shows degraded; then raises ``maxmemory`` and times until every accepted job is done;
* SIGSTOPs a worker past the heartbeat limit and SIGCONTs it once its jobs were
  re-routed, so that its late results arrive with a stale epoch and are ignored;
* SIGSTOPs both distributors for longer than an envelope lives (``AGENTS_ENVELOPE_TTL_S``
  + ``AGENTS_ENVELOPE_CLOCK_SKEW_S`` + 5 s) while jobs keep coming, then SIGCONTs them:
  the backlog's envelopes expired in our own queue and are readmitted
  (``stats:jobs`` ``expired_in_queue``); every job of it completes, at one attempt;
* runs one more worker (``w4``) with its wall clock 45 s behind, under libfaketime, for
  the whole run: it is never marked dead, completes jobs and refuses nothing as
  expired (skipped, with a line saying why, where libfaketime is missing);
* submits a burst far larger than the workers can take at once;
* puts bad inputs straight on every tier's queue, and publishes bad final job
  announcements on ``events:jobs`` for the coordinator's view (see
  :mod:`tools.chaos.inputs`).

Then it checks every job: completed with the right result in both the job record
and the result backend, exactly one recorded result, nothing lost; and that no
bad input had any effect: no target record changed, and the view believed no bad
announcement (its count of ABANDONED jobs, from the coordinator's checkpointed local state, never
exceeds the store's). The last line of stdout is one JSON object with every
figure; the exit status is non-zero if anything was lost, recorded twice, run by
a bad input, or went otherwise wrong (a process crashed, a recovery timed out).

Run: ``make chaos`` or ``.venv/bin/python -m tools.chaos [--jobs N] [--hypothesis N]``
(``--help`` lists every option). A full run (1,000 jobs, about 1,200 bad inputs,
8 faults and a skewed worker) takes about three minutes on a 2-core machine, half of it the steady
stream; ``tests/integration/test_chaos.py`` runs a smaller one (every fault once,
about 330 bad inputs) in about two minutes, and so does
``python -m tools.chaos --jobs 200 --hypothesis 200 --worker-kills 1 --burst-size 40 --rate 5``.

A replayed *genuine* announcement is not a bad input the view can refuse (it keeps
no memory of EVENTs it believed); the run replays one and reports, apart from the
verdict, whether the view refused or believed it.
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import signal
import socket
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

from celery import Celery
from pydantic import SecretStr
from redis import Redis
from redis.exceptions import OutOfMemoryError
from rich.console import Console
from rich.table import Table

from project.core.celery_app import kombu_patches
from project.core.celery_app.config import celery_config
from project.core.constants import KEY_JOB, KEY_STATS_JOBS, KEY_STATS_REFUSED
from project.core.errors import WriteRefusedError
from project.core.models import FINAL_STATUSES, JobStatus
from project.core.runtime import Runtime
from project.core.settings import Settings
from project.core.state.agent_state import agent_thread_id, load_agent_states
from project.core.submits import publish_recorded, publish_submit, record_submits
from project.local.deployment import LocalDeployment
from project.local.embedded_redis import EmbeddedRedis, child_env
from project.local.topology import default_topology, worker_service
from tools.chaos import skew
from tools.chaos.inputs import (
    ANNOUNCED_STATUS,
    RESULT_KEY_PREFIX,
    Destination,
    Forger,
    Verdict,
    announcement_destination,
    chain_of,
    destinations,
)

WORKERS = ("w1", "w2", "w3")
DISTRIBUTORS = ("distributor1", "distributor2")
CONCURRENCY = 2
FINAL = {status.value for status in FINAL_STATUSES}

# The deployment's settings: fast failure detection, so a run takes minutes.
CHAOS_ENV = {
    "AGENTS_DEV_MODE": "false",
    "AGENTS_HEARTBEAT_INTERVAL_S": "1",
    "AGENTS_HEARTBEAT_TIMEOUT_S": "4",
    "AGENTS_HEALTH_CHECK_INTERVAL_S": "1",
    "AGENTS_STUCK_JOB_AFTER_S": "5",
    "AGENTS_ASSIGN_DEADLINE_S": "120",
    "AGENTS_MAX_ATTEMPTS": "3",
    "AGENTS_MAX_PAYLOAD_BYTES": "65536",
    "AGENTS_LOG_LEVEL": "INFO",
    # Short envelope lifetime and skew allowance, so a backlog outlives its envelopes
    # in under a minute (the backlog fault).
    "AGENTS_ENVELOPE_TTL_S": "30",
    "AGENTS_ENVELOPE_CLOCK_SKEW_S": "5",
}
ENVELOPE_TTL_S = float(CHAOS_ENV["AGENTS_ENVELOPE_TTL_S"])
CLOCK_SKEW_S = float(CHAOS_ENV["AGENTS_ENVELOPE_CLOCK_SKEW_S"])

SKEWED_WORKER = "w4"
"""The extra worker whose wall clock is off (the clock-skew fault)."""
SKEW_OFFSET_S = -45
SKEWED_WORKER_ENV = {
    # Its clock is 45 s behind, far beyond the deployment's 5 s allowance, so it is the
    # one that must allow for it: the work orders it gets are signed 45 s in its future
    # (allowance 60 s), and its RESPONSEs carry its clock, so it signs them for 120 s
    # (else every one would reach a distributor already expired and be readmitted,
    # counted as a backlog's). Liveness is on Redis's clock: nothing to set for it.
    "AGENTS_ENVELOPE_CLOCK_SKEW_S": "60",
    "AGENTS_ENVELOPE_TTL_S": "120",
}

T = TypeVar("T")


@dataclass(frozen=True)
class ChaosPlan:
    """What one chaos run does."""

    jobs: int = 1000
    """Good jobs at least: the steady stream (which flows on until the last fault is over),
    the loads put on workers before a fault, and the bursts."""
    hypothesis_inputs: int = 1000
    """Malformed envelopes generated by hypothesis for the tasks (on top of the hand-made
    bad inputs)."""
    hypothesis_announcements: int = 100
    """Malformed EVENTs generated by hypothesis, each in a final announcement for the view."""
    worker_kills: int = 3
    """SIGKILLs of a worker (w1, w2, w3 in turn), each restarted after its jobs recovered."""
    worker_stops: int = 1
    """SIGSTOPs of a worker past the heartbeat limit, SIGCONT after its jobs were re-routed."""
    distributor_kills: int = 1
    """SIGKILLs of a distributor, restarted after it was marked dead."""
    redis_restarts: int = 1
    """SIGKILLs of redis-server, started again on the same AOF."""
    redis_fulls: int = 1
    """Episodes of a Redis at maxmemory (noeviction), ``redis_full_s`` each."""
    redis_full_s: float = 10.0
    """How long Redis stays full in each such episode."""
    backlogs: int = 1
    """Episodes of both distributors SIGSTOPped past the envelope lifetime while jobs come."""
    clock_skew: bool = True
    """Run one extra worker with its wall clock 45 s behind (libfaketime) the whole run."""
    bursts: int = 1
    """Bursts of ``burst_size`` jobs submitted at once."""
    burst_size: int = 150
    """Jobs per burst; far more than the workers' slots (3 workers x 2, plus prefetch)."""
    rate_per_s: float = 8.0
    """Steady-stream rate, jobs per second."""
    seed: int = 7
    """Seeds the workload and hypothesis."""
    drain_timeout_s: float = 180.0
    """How long to wait, after the schedule, for every job to finish before calling it lost."""


@dataclass
class GoodJob:
    """One job of the workload and the result it must have."""

    id: str
    task_type: str
    payload: dict[str, Any]
    priority: str
    expect: dict[str, Any]
    group: str


def _compute_job(rng: random.Random, index: int) -> tuple[str, dict[str, Any], dict[str, Any]]:
    values = [rng.randint(-50, 50) for _ in range(rng.randint(1, 12))]
    operation = rng.choice(["sum", "min", "max", "count"])
    if operation == "sum":
        result = sum(values)
    elif operation == "min":
        result = min(values)
    elif operation == "max":
        result = max(values)
    else:
        result = len(values)
    return (
        "compute",
        {"operation": operation, "values": values},
        {"operation": operation, "result": result},
    )


def _data_job(rng: random.Random, index: int) -> tuple[str, dict[str, Any], dict[str, Any]]:
    records: list[dict[str, Any]] = [
        {"k": rng.choice("abc"), "v": rng.randint(0, 9)} for _ in range(rng.randint(1, 12))
    ]
    threshold = rng.randint(0, 6)
    kept = [r for r in records if r["v"] > threshold]
    totals: Counter[str] = Counter()
    for record in kept:
        totals[str(record["k"])] += int(record["v"])
    steps = [
        {"op": "filter", "field": "v", "cmp": "gt", "value": threshold},
        {"op": "aggregate", "func": "sum", "field": "v", "group_by": "k"},
    ]
    return (
        "data_processing",
        {"records": records, "steps": steps},
        {"result": dict(sorted(totals.items())), "count": len(kept)},
    )


def _generic_job(
    rng: random.Random, index: int, sleep_s: float
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    echo = {"n": index, "tag": rng.choice(["x", "y", "z"])}
    return "generic", {"echo": echo, "sleep_s": sleep_s}, {"result": echo}


class Workload:
    """Makes good jobs with known results, deterministically from a seed."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        self._index = 0
        self._lock = threading.Lock()

    def _job(self, group: str, kind: str, sleep_s: float = 0.0) -> GoodJob:
        with self._lock:
            self._index += 1
            index, rng = self._index, self._rng
            if kind == "compute":
                task_type, payload, expect = _compute_job(rng, index)
            elif kind == "data_processing":
                task_type, payload, expect = _data_job(rng, index)
            else:
                task_type, payload, expect = _generic_job(rng, index, sleep_s)
            priority = rng.choice(["urgent", "high", "normal", "normal", "low"])
            job_id = f"chaos-{group}-{index}-{rng.getrandbits(48):012x}"
        return GoodJob(job_id, task_type, payload, priority, expect, group)

    def mixed(self, group: str) -> GoodJob:
        """A job of any type; generic ones sleep a little."""
        kind = self._rng.choice(["compute", "data_processing", "generic"])
        return self._job(group, kind, self._rng.choice([0.0, 0.02, 0.05, 0.1, 0.2]))

    def slow(self, group: str, sleep_s: float) -> GoodJob:
        """A generic job that holds a worker slot for ``sleep_s``."""
        return self._job(group, "generic", sleep_s)


def _retrying(action: Callable[[], T], what: str, timeout_s: float = 180.0) -> T:
    """Run ``action``, retrying through a Redis outage (its errors) until ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return action()
        except Exception:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} kept failing for {timeout_s}s") from None
            time.sleep(0.5)


def client_app(settings: Settings) -> Celery:
    """A Celery client bound to the chaos Redis, independent of ``project.app``.

    It has no result backend: results are read straight from Redis, so the
    client holds no pub/sub subscriptions that a Redis restart would break.
    """
    config = celery_config(settings)
    for name in ("beat_schedule", "result_backend", "result_backend_transport_options"):
        config.pop(name, None)
    client = Celery("chaos-client", set_as_current=False)
    client.conf.update(config)
    return client


class Cluster:
    """The deployment under test, a client bound to it, and what happened to it."""

    def __init__(
        self, server: EmbeddedRedis, deployment: LocalDeployment, settings: Settings
    ) -> None:
        self.server = server
        self.deployment = deployment
        self.settings = settings
        self.rt = Runtime(settings)
        self.client = client_app(settings)
        self.started = time.monotonic()
        self.jobs: dict[str, GoodJob] = {}
        self._lock = threading.Lock()
        self.faults: list[dict[str, Any]] = []
        self.problems: list[str] = []
        self.unexpected_exits: list[dict[str, Any]] = []
        self.expected_late_results = 0
        self.host = socket.gethostname()
        self.skewed: str | None = SKEWED_WORKER if SKEWED_WORKER in deployment.processes else None
        """The worker with a skewed clock, if it runs."""
        self.skewed_marked_dead = 0
        """Times the watcher saw the skewed worker in the registry's dead set."""
        self._watching = threading.Event()
        self._watcher: threading.Thread | None = None
        if self.skewed is not None:
            self._watcher = threading.Thread(
                target=self._watch_skewed, name="chaos-skew-watch", daemon=True
            )
            self._watching.set()
            self._watcher.start()

    def _watch_skewed(self) -> None:
        """Every 0.25 s: is the skewed worker marked dead? (A dead mark lasts a heartbeat.)"""
        was_dead = False
        while self._watching.is_set():
            try:
                dead = self.skewed in self.rt.registry.dead_agents()
            except Exception:  # Redis restarting: look again
                dead = was_dead
            if dead and not was_dead:
                self.skewed_marked_dead += 1
            was_dead = dead
            time.sleep(0.25)

    def stop_watching(self) -> None:
        self._watching.clear()
        if self._watcher is not None:
            self._watcher.join(timeout=5)

    # --- submitting and watching ------------------------------------------------------

    def submit(self, jobs: Sequence[GoodJob]) -> None:
        """Submit jobs as an app does (intents first), riding out a Redis outage."""
        with self._lock:
            for job in jobs:
                self.jobs[job.id] = job
        calls = {
            job.id: {
                "args": [job.task_type, job.payload],
                "kwargs": {"priority": job.priority},
            }
            for job in jobs
        }
        _retrying(lambda: self.rt.jobs.record_intents(calls), "recording submit intents")
        for job in jobs:
            call = calls[job.id]
            _retrying(
                lambda job=job, call=call: publish_submit(self.client, job.id, call),  # type: ignore[misc]
                f"submitting {job.id}",
            )

    def elapsed(self) -> float:
        """Seconds since the cluster came up."""
        return round(time.monotonic() - self.started, 2)

    def states(self, job_ids: Sequence[str]) -> dict[str, tuple[str, str, int]]:
        """(status, assignee, epoch) of each job ('' if it has no record)."""

        def read() -> dict[str, tuple[str, str, int]]:
            found: dict[str, tuple[str, str, int]] = {}
            for start in range(0, len(job_ids), 1000):
                chunk = job_ids[start : start + 1000]
                pipe = self.rt.redis.pipeline(transaction=False)
                for job_id in chunk:
                    pipe.hmget(KEY_JOB + job_id, "status", "assignee", "epoch")
                for job_id, (status, assignee, epoch) in zip(chunk, pipe.execute(), strict=True):
                    found[job_id] = (status or "", assignee or "", int(epoch or 0))
            return found

        return _retrying(read, "reading job states")

    def unfinished(self, job_ids: Sequence[str] | None = None) -> list[str]:
        """Jobs (default: every good job) not yet in a final status."""
        with self._lock:
            ids = list(self.jobs) if job_ids is None else list(job_ids)
        return [j for j, (status, _, _) in self.states(ids).items() if status not in FINAL]

    def completed_count(self) -> int:
        """Jobs that reached COMPLETED, from the store's counters."""
        return _retrying(lambda: self.rt.jobs.counts().get("COMPLETED", 0), "reading counts")

    def held_by(self, worker_id: str) -> dict[str, tuple[str, str, int]]:
        """Unfinished jobs assigned to a worker, with their state."""
        ids = sorted(_retrying(lambda: self.rt.jobs.open_jobs_of(worker_id), "reading jobs"))
        return {
            j: s for j, s in self.states(ids).items() if s[0] not in FINAL and s[1] == worker_id
        }

    def stat(self, key: str, name: str) -> int:
        """One counter of a stats hash."""
        return int(_retrying(lambda: self.rt.redis.hget(key, name), "reading stats") or 0)

    def view_excess(self, status: str) -> int | None:
        """Jobs the coordinator's view counts in ``status`` beyond the store's count.

        The view's counts reach the coordinator's checkpointed local state
        (``metadata["view"]``) a heartbeat or two late; None if it holds none (the view
        is not following the channel).
        """
        thread = agent_thread_id(self.agent_id("coordinator"), None)
        state = load_agent_states(self.rt.redis, [thread]).get(thread)
        view = state.metadata.get("view") if state is not None else None
        jobs = view.get("jobs") if isinstance(view, dict) else None
        if not isinstance(jobs, dict):
            return None
        return int(str(jobs.get(status) or 0)) - self.rt.jobs.counts().get(status, 0)

    # --- processes -------------------------------------------------------------------

    def agent_id(self, service: str) -> str:
        """The registry id of a service's agent."""
        return service if service in (*WORKERS, SKEWED_WORKER) else f"{service}@{self.host}"

    def wait_agent_ready(self, service: str, timeout_s: float = 90.0) -> None:
        """Until the service's current process has registered and is not marked dead."""
        agent_id = self.agent_id(service)
        pid = self.deployment.processes[service].pid

        def ready() -> bool:
            snapshot = self.rt.registry.snapshot()
            cards, dead = snapshot.cards, snapshot.dead
            card = cards.get(agent_id)
            return card is not None and card.pid == pid and agent_id not in dead

        if not _wait(ready, timeout_s):
            raise RuntimeError(f"{service} did not come back within {timeout_s}s")

    def restart(self, service: str) -> None:
        """Start a killed service again and wait until it serves."""
        self.deployment.start([service])
        self.wait_agent_ready(service)

    def check_alive(self) -> None:
        """Note (and restart) any process that exited without being told to."""
        for name, process in list(self.deployment.processes.items()):
            if process.poll() is not None:
                self.unexpected_exits.append(
                    {"service": name, "returncode": process.returncode, "at_s": self.elapsed()}
                )
                self.problems.append(f"{name} exited unexpectedly ({process.returncode})")
                self.deployment.start([name])

    # --- faults ---------------------------------------------------------------------

    def load_workers(
        self, workload: Workload, target: str, *, running: int = 1, sleep_s: float = 1.5
    ) -> None:
        """Submit slow jobs until ``target`` runs ``running`` of them and has more queued.

        So the fault catches it mid-job, with work orders waiting in its queue too.
        After 30 s the fault goes ahead with whatever the worker holds.
        """
        slots = len(WORKERS) * CONCURRENCY
        self.submit([workload.slow("hold", sleep_s) for _ in range(2 * slots)])

        def loaded() -> bool:
            held = self.held_by(target)
            busy = sum(1 for s in held.values() if s[0] == JobStatus.IN_PROGRESS.value)
            return busy >= running and len(held) > busy

        if not _wait(loaded, 30.0) and not self.held_by(target):
            self.problems.append(f"{target} held no job when its fault came")

    def _recovered(self, job_ids: Sequence[str], worker_id: str) -> bool:
        for status, assignee, _ in self.states(job_ids).values():
            if status in FINAL:
                continue
            if status != JobStatus.IN_PROGRESS.value or assignee == worker_id:
                return False
        return True

    def _seconds_until(
        self,
        check: Callable[[], bool],
        since: float,
        timeout_s: float,
        problem: str,
        every_s: float = 0.1,
    ) -> float | None:
        """Seconds from monotonic ``since`` until ``check`` holds; None and ``problem`` noted
        if it does not within ``timeout_s``."""
        if _wait(check, timeout_s, every_s=every_s):
            return round(time.monotonic() - since, 2)
        self.problems.append(problem)
        return None

    def _fault(self, kind: str, at: float, **figures: Any) -> None:
        """Record a fault of ``kind`` that came at monotonic ``at``, with its figures."""
        self.faults.append({"kind": kind, "at_s": round(at - self.started, 2), **figures})

    def kill_worker(self, workload: Workload, name: str) -> None:
        """SIGKILL a worker mid-job; time its jobs' recovery; restart it."""
        self.load_workers(workload, name)
        held = self.held_by(name)
        self.deployment.kill(name)
        killed = time.monotonic()
        recovery_s = self._seconds_until(
            lambda: self._recovered(list(held), name),
            killed,
            90.0,
            f"jobs of killed {name} not recovered within 90 s",
        )
        self.restart(name)
        self.faults.append(
            {
                "kind": "worker_kill",
                "target": name,
                "at_s": round(killed - self.started, 2),
                "jobs_held": len(held),
                "recovery_s": recovery_s,
            }
        )

    def stop_worker(self, workload: Workload, name: str) -> None:
        """SIGSTOP a worker past the heartbeat limit; SIGCONT it once its jobs were re-routed."""
        self.load_workers(workload, name, running=CONCURRENCY)
        held = self.held_by(name)
        running = {j: s[2] for j, s in held.items() if s[0] == JobStatus.IN_PROGRESS.value}
        self.deployment.signal(name, signal.SIGSTOP)
        stopped = time.monotonic()
        rerouted: list[str] = []
        try:
            recovery_s = self._seconds_until(
                lambda: (
                    name in self.rt.registry.dead_agents() and self._recovered(list(held), name)
                ),
                stopped,
                90.0,
                f"jobs of stopped {name} not recovered within 90 s",
            )
            rerouted = [j for j, s in self.states(list(running)).items() if s[2] != running[j]]
            ignored_before = self.stat(KEY_STATS_JOBS, "stale_results_ignored")
        finally:
            self.deployment.signal(name, signal.SIGCONT)
        resumed = time.monotonic()
        # Its runs in progress finish now and report with their old epoch: ignored. Waited
        # for here, so that no later fault (a Redis kill) can swallow a late result.
        self.expected_late_results += len(rerouted)

        def late() -> int:
            return self.stat(KEY_STATS_JOBS, "stale_results_ignored") - ignored_before

        if not _wait(lambda: late() >= len(rerouted), 60.0):
            self.problems.append(
                f"late results of {name}: {late()} ignored, {len(rerouted)} expected"
            )
        if not _wait(lambda: name not in self.rt.registry.dead_agents(), 60.0):
            self.problems.append(f"{name} was not re-admitted after SIGCONT")
        self.faults.append(
            {
                "kind": "worker_stop",
                "target": name,
                "at_s": round(stopped - self.started, 2),
                "stopped_s": round(resumed - stopped, 2),
                "jobs_held": len(held),
                "running_rerouted": len(rerouted),
                "late_results_ignored": late(),
                "recovery_s": recovery_s,
            }
        )

    def kill_distributor(self, name: str) -> None:
        """SIGKILL a distributor while jobs flow; restart it once it is marked dead."""
        self.deployment.kill(name)
        killed = time.monotonic()
        agent_id = self.agent_id(name)
        if not _wait(lambda: agent_id in self.rt.registry.dead_agents(), 60.0):
            self.problems.append(f"killed {name} was not marked dead")
        dead_s = round(time.monotonic() - killed, 2)
        self.restart(name)
        self.faults.append(
            {
                "kind": "distributor_kill",
                "target": name,
                "at_s": round(killed - self.started, 2),
                "marked_dead_s": dead_s,
            }
        )

    def restart_redis(self, down_s: float = 1.0) -> None:
        """SIGKILL redis-server, start it again on its AOF, wait until jobs complete again."""
        before = self.completed_count()
        self.server.kill()
        killed = time.monotonic()
        time.sleep(down_s)
        self.server.start()
        restarted = time.monotonic()
        after_restart = self.completed_count()
        resume_s = self._seconds_until(
            lambda: self.completed_count() > after_restart,
            restarted,
            120.0,
            "no job completed within 120 s of the Redis restart",
        )
        if after_restart < before:
            self.problems.append(f"COMPLETED count went back from {before} to {after_restart}")
        self._fault("redis_restart", killed, down_s=round(restarted - killed, 2), resume_s=resume_s)

    def fill_redis(self, workload: Workload, full_s: float) -> None:
        """Fill Redis to maxmemory (noeviction) while jobs run; keep it full; raise it again.

        Redis is filled with padding just up to a ``maxmemory`` set a little above
        what it uses, and topped up again whenever something freed memory, as a
        growing data set would. Meanwhile an app submits once every 0.2 s and takes
        a refusal as its answer (the stream's feeder instead retries until its
        submit is recorded). Then ``maxmemory`` goes back to unlimited, the padding
        is deleted, and the time until every job accepted so far is final is taken.
        """
        admin = Redis(port=self.server.port, password=self.server.password, decode_responses=True)
        slots = len(WORKERS) * CONCURRENCY
        self.submit([workload.slow("full", 0.5) for _ in range(2 * slots)])  # in flight
        limit = int(admin.info("memory")["used_memory"]) + 64 * 1024
        admin.config_set("maxmemory", str(limit))
        padding = _top_up(admin, 0)
        filled = time.monotonic()
        refused: list[str] = []
        accepted = 0
        degraded: set[str] = set()
        peak = 0
        try:
            while time.monotonic() - filled < full_s:
                padding = _top_up(admin, padding)
                job = workload.mixed("full")
                try:
                    self._submit_once(job)
                    accepted += 1
                except WriteRefusedError as error:
                    refused.append(str(error))
                snapshot = self.rt.registry.snapshot()
                degraded |= {a for a in snapshot.cards if snapshot.is_degraded(a)}
                peak = max(peak, int(admin.info("memory")["used_memory"]))
                self.check_alive()
                time.sleep(0.2)
        finally:
            admin.config_set("maxmemory", "0")
        raised = time.monotonic()
        for start in range(0, padding, 1000):
            admin.delete(*(f"chaos:padding:{n}" for n in range(start, min(padding, start + 1000))))
        admin.delete("chaos:padding")
        with self._lock:
            ids = list(self.jobs)
        done_s = self._seconds_until(
            lambda: not self.unfinished(ids),
            raised,
            120.0,
            "accepted jobs not done within 120 s of Redis taking writes",
            every_s=0.2,
        )
        if not refused or peak <= limit:
            self.problems.append("Redis never refused a submit: it was not full")
        if any("nothing was submitted" not in e for e in refused):
            self.problems.append("a refused submit did not say that nothing was submitted")
        agents = {self.agent_id(name) for name in self.deployment.processes if name != "beat"}
        if not agents <= degraded:
            self.problems.append(f"not shown degraded while Redis was full: {agents - degraded}")
        self._fault(
            "redis_full",
            filled,
            full_s=round(raised - filled, 2),
            maxmemory_bytes=limit,
            submits_refused=len(refused),
            submits_accepted_while_full=accepted,
            agents_degraded=len(degraded & agents),
            all_done_after_s=done_s,
        )
        admin.close()

    def backlog(self) -> None:
        """SIGSTOP both distributors past the envelope lifetime while jobs come; SIGCONT.

        The stream keeps submitting meanwhile: the coordinator takes each job in and
        sends its signed REQUEST to the distributors' queue, where it waits longer than
        it lives (TTL + skew allowance + 5 s). Workers' RESPONSEs of the jobs in
        flight wait there too. Once the distributors go on, each of those envelopes is
        expired yet still the message its job waits for, so it is readmitted
        (``expired_in_queue``). Figures: the jobs that waited, the readmissions, the
        time until all of them are final, and their attempts (1 each: a backlog is no
        failed attempt).
        """
        stop_s = ENVELOPE_TTL_S + CLOCK_SKEW_S + 5.0
        readmitted_before = self.stat(KEY_STATS_JOBS, "expired_in_queue")
        resends_before = self._resends()
        with self._lock:
            before = list(self.jobs)
        waiting = self.unfinished(before)  # in flight when the distributors stop
        for name in DISTRIBUTORS:
            self.deployment.signal(name, signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            while time.monotonic() - stopped < stop_s:
                time.sleep(0.5)
        finally:
            for name in DISTRIBUTORS:
                self.deployment.signal(name, signal.SIGCONT)
        resumed = time.monotonic()
        known = set(before)
        with self._lock:
            arrived = [j for j in self.jobs if j not in known]
        held = waiting + arrived
        done = _wait(lambda: not self.unfinished(held), 180.0, every_s=0.2)
        done_s = round(time.monotonic() - resumed, 2) if done else None
        readmitted = self.stat(KEY_STATS_JOBS, "expired_in_queue") - readmitted_before
        resends = self._resends() - resends_before
        attempts: Counter[str] = Counter()
        for start in range(0, len(held), 1000):
            pipe = self.rt.redis.pipeline(transaction=False)
            for job_id in held[start : start + 1000]:
                pipe.hget(KEY_JOB + job_id, "attempts")
            attempts.update(str(a or 0) for a in pipe.execute())
        if not done:
            self.problems.append("backlog: its jobs not all final within 180 s of SIGCONT")
        if readmitted == 0:
            self.problems.append("backlog: no envelope was readmitted: none outlived its TTL")
        # A readmitted envelope is no failed attempt. The one thing that may add one is
        # the health check: with this deployment's 5 s AGENTS_STUCK_JOB_AFTER_S, a job
        # assigned in the surge after SIGCONT whose order still waits in a worker's
        # prefetch looks lost and is re-sent (a new epoch, a second attempt).
        extra = sum(n for a, n in attempts.items() if a != "1")
        if extra > resends:
            self.problems.append(
                f"backlog: {extra} jobs took more than one attempt, only {resends} re-sent "
                f"by the health check: {dict(attempts)}"
            )
        agents = [self.agent_id(name) for name in DISTRIBUTORS]
        if not _wait(lambda: not set(agents) & self.rt.registry.dead_agents(), 60.0):
            self.problems.append("backlog: a distributor was not re-admitted after SIGCONT")
        self._fault(
            "backlog",
            stopped,
            stopped_s=round(resumed - stopped, 2),
            envelope_ttl_s=ENVELOPE_TTL_S,
            clock_skew_s=CLOCK_SKEW_S,
            jobs_in_flight_at_stop=len(waiting),
            jobs_queued_during_stop=len(arrived),
            envelopes_readmitted=readmitted,
            all_done_after_s=done_s,
            attempts=dict(sorted(attempts.items())),
            resent_by_health_check=resends,
        )

    def _resends(self) -> int:
        """Jobs the health check re-sent so far (re-routed or re-sent as stuck)."""
        return self.stat(KEY_STATS_JOBS, "rerouted") + self.stat(KEY_STATS_JOBS, "resent_stuck")

    def skew_figures(self) -> dict[str, Any]:
        """The clock-skew fault's figures, at the end of the run (the worker ran throughout)."""
        assert self.skewed is not None
        self.stop_watching()
        with self._lock:
            ids = list(self.jobs)
        done_by = sum(
            1
            for status, assignee, _ in self.states(ids).values()
            if status == JobStatus.COMPLETED.value and assignee == self.skewed
        )
        refused = _refused_by(self.deployment.metrics_dir(self.skewed))
        if self.skewed_marked_dead:
            self.problems.append(f"clock skew: {self.skewed} was marked dead")
        if refused.get("expired", 0):
            self.problems.append(f"clock skew: {self.skewed} refused envelopes as expired")
        if done_by == 0:
            self.problems.append(f"clock skew: {self.skewed} completed no job")
        return {
            "kind": "clock_skew",
            "target": self.skewed,
            "offset_s": SKEW_OFFSET_S,
            "marked_dead": self.skewed_marked_dead,
            "jobs_completed": done_by,
            "refused_expired": refused.get("expired", 0),
            "refused_by_reason": refused,
        }

    def _submit_once(self, job: GoodJob) -> None:
        """Submit as an app that takes a refusal for an answer (WriteRefusedError)."""
        call = {"args": [job.task_type, job.payload], "kwargs": {"priority": job.priority}}
        record_submits(self.rt.jobs, {job.id: call})
        with self._lock:
            self.jobs[job.id] = job
        # Recorded: a refused publish is left to the health check, as for any app.
        publish_recorded(self.client, job.id, lambda: publish_submit(self.client, job.id, call))

    def burst(self, workload: Workload, size: int) -> None:
        """Submit ``size`` jobs at once; time until all are done."""
        jobs = [workload.mixed("burst") for _ in range(size)]
        sent = time.monotonic()
        self.submit(jobs)
        ids = [j.id for j in jobs]
        drained = _wait(lambda: not self.unfinished(ids), 180.0)
        self.faults.append(
            {
                "kind": "burst",
                "jobs": size,
                "at_s": round(sent - self.started, 2),
                "drain_s": round(time.monotonic() - sent, 2) if drained else None,
            }
        )


def _refused_by(metrics_dir: Path) -> dict[str, int]:
    """Envelopes one service refused, by reason, from its Prometheus multiprocess files."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(metrics_dir))  # type: ignore[no-untyped-call]
    refused: Counter[str] = Counter()
    for metric in registry.collect():
        if metric.name != "agents_envelopes_refused":
            continue
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                refused[sample.labels["reason"]] += int(sample.value)
    return dict(refused)


def _top_up(admin: Redis, padding: int) -> int:
    """Write 1 KiB padding keys until Redis refuses; returns how many there are now."""
    try:
        while padding < 1_000_000:
            admin.set(f"chaos:padding:{padding}", "x" * 1024)
            padding += 1
    except OutOfMemoryError:
        pass
    return padding


def _wait(check: Callable[[], bool], timeout_s: float, every_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(every_s)
    return True


class Feeder(threading.Thread):
    """Submits the steady stream at a fixed rate: ``count`` jobs, and on until the schedule ends.

    The fault schedule is spread over the stream (see :meth:`wait_for_share`), and the
    stream keeps flowing until the last fault is over, so every fault meets a live flow.
    """

    def __init__(self, cluster: Cluster, workload: Workload, count: int, rate_per_s: float):
        super().__init__(name="chaos-feeder", daemon=True)
        self.cluster = cluster
        self.workload = workload
        self.count = count
        self.rate_per_s = rate_per_s
        self.stop_event = threading.Event()
        self.schedule_done = threading.Event()
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            next_at = time.monotonic()
            while not self.stop_event.is_set():
                if self.sent >= self.count and self.schedule_done.is_set():
                    break
                next_at = max(next_at + 1.0 / self.rate_per_s, time.monotonic() - 1.0)
                delay = next_at - time.monotonic()
                if delay > 0 and self.stop_event.wait(delay):
                    break
                self.cluster.submit([self.workload.mixed("stream")])
                self.sent += 1
        except BaseException as exc:  # reported by the runner
            self.error = exc

    def wait_for_share(self, fraction: float) -> None:
        """Until ``fraction`` of the stream is sent (or the stream stopped)."""
        _wait(
            lambda: self.sent >= self.count * fraction or not self.is_alive(),
            self.count / self.rate_per_s + 60.0,
        )


@contextmanager
def _running_cluster(
    root: Path, keys: str, console: Console, clock_skew: bool = True
) -> Iterator[tuple[EmbeddedRedis, LocalDeployment, Settings, str | None]]:
    """Private Redis and every tier as processes; everything stopped on the way out.

    With ``clock_skew``, one more worker runs with its wall clock off (if libfaketime
    works here); the fourth item yielded says why it does not, else None.
    """
    server = EmbeddedRedis(root / "redis", appendfsync="always")
    server.start()
    deployment: LocalDeployment | None = None
    try:
        # Only our settings: nothing inherited (a test's or a shell's AGENTS_*) leaks in.
        env = {k: v for k, v in child_env().items() if not k.startswith("AGENTS_")}
        env.update(CHAOS_ENV, AGENTS_REDIS_URL=server.url, AGENTS_A2A_KEYS=keys)
        settings = Settings(
            _env_file=None,
            redis_url=server.url,
            a2a_keys=SecretStr(keys),
            dev_mode=False,
            heartbeat_interval_s=1.0,
            heartbeat_timeout_s=4.0,
            health_check_interval_s=1.0,
            stuck_job_after_s=5.0,
            assign_deadline_s=120.0,
            max_attempts=3,
            max_payload_bytes=int(CHAOS_ENV["AGENTS_MAX_PAYLOAD_BYTES"]),
            result_ttl_s=86_400,
            # What this client signs (bad inputs, replay controls) lives an hour, so none
            # of them expires behind a queue; the deployment's own envelopes live 30 s.
            envelope_ttl_s=3600.0,
            envelope_clock_skew_s=CLOCK_SKEW_S,  # as the tiers verify (accepted_by_tier)
        )
        services = default_topology(workers=WORKERS, distributors=len(DISTRIBUTORS), beat=True)
        skew_skipped: str | None = "not asked for (--no-clock-skew)"
        if clock_skew:
            library = skew.find_libfaketime()
            shim = skew.write_shim(root / "faketime_shim")
            if library is None:
                skew_skipped = (
                    "libfaketime.so.1 not found (looked under /usr/lib/<multiarch>/faketime, "
                    "/usr/lib/faketime, /usr/local/lib/faketime): install Debian's 'faketime'"
                )
            else:
                skew_skipped = skew.probe(library, SKEW_OFFSET_S, shim)
            if skew_skipped is None:
                assert library is not None
                faked = skew.skewed_env(library, SKEW_OFFSET_S, shim, env.get("PYTHONPATH"))
                worker_env = {**faked, **SKEWED_WORKER_ENV}
                plain = worker_service(SKEWED_WORKER, concurrency=CONCURRENCY)
                services.append(replace(plain, env={**plain.env, **worker_env}))
            else:
                console.log(f"chaos: clock_skew fault SKIPPED: {skew_skipped}")
        deployment = LocalDeployment(
            services,
            env=env,
            log_dir=root / "logs",
            workdir=root,
        )
        deployment.start()
        deployment.wait_ready(timeout_s=120)
        console.log(f"chaos: {len(deployment.processes)} processes up; logs in {root / 'logs'}")
        yield server, deployment, settings, skew_skipped
    finally:
        if deployment is not None:
            deployment.stop()
        server.stop()


def run_chaos(
    jobs: int = 1000,
    *,
    hypothesis_inputs: int = 1000,
    hypothesis_announcements: int | None = None,
    worker_kills: int = 3,
    worker_stops: int = 1,
    distributor_kills: int = 1,
    redis_restarts: int = 1,
    redis_fulls: int = 1,
    redis_full_s: float = 10.0,
    backlogs: int = 1,
    clock_skew: bool = True,
    bursts: int = 1,
    burst_size: int | None = None,
    rate_per_s: float = 8.0,
    seed: int = 7,
    workdir: Path | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run the chaos suite once and return its figures (see the module docstring).

    ``hypothesis_announcements`` defaults to a tenth of ``hypothesis_inputs``.
    """
    plan = ChaosPlan(
        jobs=jobs,
        hypothesis_inputs=hypothesis_inputs,
        hypothesis_announcements=(
            hypothesis_inputs // 10
            if hypothesis_announcements is None
            else hypothesis_announcements
        ),
        worker_kills=worker_kills,
        worker_stops=worker_stops,
        distributor_kills=distributor_kills,
        redis_restarts=redis_restarts,
        redis_fulls=redis_fulls,
        redis_full_s=redis_full_s,
        backlogs=backlogs,
        clock_skew=clock_skew,
        bursts=bursts,
        burst_size=burst_size if burst_size is not None else max(40, jobs // 7),
        rate_per_s=rate_per_s,
        seed=seed,
    )
    return _run(plan, workdir, console or Console())


def _run(plan: ChaosPlan, workdir: Path | None, console: Console) -> dict[str, Any]:
    # A fresh folder per run (inside ``workdir`` if given): an old AOF or old logs would
    # skew the counts.
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="agents-chaos-", dir=workdir))
    keys = f"chaos-k1:{secrets.token_hex(32)},chaos-k0:{secrets.token_hex(32)}"
    kombu_patches.apply()
    began = time.monotonic()
    workload = Workload(plan.seed)
    holds = 2 * len(WORKERS) * CONCURRENCY * (plan.worker_kills + plan.worker_stops)
    stream = max(0, plan.jobs - holds - plan.bursts * plan.burst_size)
    with _running_cluster(root, keys, console, plan.clock_skew) as (
        server,
        deployment,
        settings,
        skew_skipped,
    ):
        cluster = Cluster(server, deployment, settings)
        rate = plan.rate_per_s
        feeder = Feeder(cluster, workload, stream, rate)
        verdict, view = Verdict(), ViewFigures()
        forger = Forger(
            cluster.rt, cluster.client, destinations(WORKERS, DISTRIBUTORS), deployment.log_dir
        )
        controls: list[str] = []
        try:
            feeder.start()
            console.log(f"chaos: streaming {stream} jobs at {rate:.1f}/s")
            _wait(lambda: cluster.completed_count() >= 10, 120.0)
            steps = _schedule(plan)
            try:
                for number, (kind, target) in enumerate(steps, 1):
                    feeder.wait_for_share((number - 1) / len(steps))
                    console.log(
                        f"chaos: step {number}/{len(steps)}: {kind} {target} "
                        f"({feeder.sent} stream jobs sent)"
                    )
                    if kind == "bad_inputs":
                        controls, verdict, view = _bad_inputs(cluster, forger, plan, console)
                    else:
                        _fault(cluster, workload, plan, kind, target)
                    cluster.check_alive()
            except Exception as exc:  # report what happened so far, then the figures
                console.print_exception()
                cluster.problems.append(f"the schedule stopped: {exc!r}")
            feeder.schedule_done.set()
            feeder.join(timeout=plan.drain_timeout_s)
            if feeder.error is not None:
                cluster.problems.append(f"the stream stopped: {feeder.error!r}")
            console.log("chaos: schedule done; waiting for every job to finish")
            _wait(lambda: not cluster.unfinished(), plan.drain_timeout_s, every_s=0.5)
            cluster.check_alive()
            changed_late = forger.changed_targets()
            if cluster.skewed is not None:
                cluster.faults.append(cluster.skew_figures())
            report = _report(cluster, plan, verdict, view, controls, changed_late, rate)
            report["skipped_faults"] = (
                {"clock_skew": skew_skipped} if plan.clock_skew and skew_skipped else {}
            )
        finally:
            cluster.stop_watching()
            feeder.stop_event.set()
            feeder.join(timeout=30)
    report["duration_s"] = round(time.monotonic() - began, 1)
    report["workdir"] = str(root)
    return report


def _fault(cluster: Cluster, workload: Workload, plan: ChaosPlan, kind: str, target: str) -> None:
    if kind == "worker_kill":
        cluster.kill_worker(workload, target)
    elif kind == "worker_stop":
        cluster.stop_worker(workload, target)
    elif kind == "distributor_kill":
        cluster.kill_distributor(target)
    elif kind == "redis_restart":
        cluster.restart_redis()
    elif kind == "redis_full":
        cluster.fill_redis(workload, plan.redis_full_s)
    elif kind == "backlog":
        cluster.backlog()
    elif kind == "burst":
        cluster.burst(workload, plan.burst_size)


def _schedule(plan: ChaosPlan) -> list[tuple[str, str]]:
    """The order of faults: interleaved, bad inputs in a window without process faults."""
    kills = [("worker_kill", WORKERS[i % len(WORKERS)]) for i in range(plan.worker_kills)]
    stops = [("worker_stop", WORKERS[(i + 1) % len(WORKERS)]) for i in range(plan.worker_stops)]
    dists = [
        ("distributor_kill", DISTRIBUTORS[i % len(DISTRIBUTORS)])
        for i in range(plan.distributor_kills)
    ]
    steps: list[tuple[str, str]] = []
    steps += kills[:1] + dists
    steps.append(("bad_inputs", ""))
    steps += stops + [("redis_restart", "")] * plan.redis_restarts
    steps += [("redis_full", "")] * plan.redis_fulls
    steps += [("backlog", "")] * plan.backlogs
    steps += [("burst", "")] * plan.bursts + kills[1:]
    return steps


@dataclass
class ViewFigures:
    """What the coordinator's view made of the bad announcements, and of one replay."""

    believed: int | None = None
    """Bad announcements the view believed (its ABANDONED count over the store's); None
    if its counts could not be read."""
    replay_refused: bool | None = None
    """Whether the view refused a replayed genuine announcement."""
    replay_believed: int | None = None
    """How many times it counted that replay as a job ending (0 or 1)."""


def _bad_inputs(
    cluster: Cluster, forger: Forger, plan: ChaosPlan, console: Console
) -> tuple[list[str], Verdict, ViewFigures]:
    """Replays, hand-made forgeries and hypothesis inputs, while the stream flows.

    First to the tasks' queues; then, once every one of those is accounted for (so
    that nothing else is being refused), bad announcements to the view, one at a time.
    """
    before = cluster.rt.jobs.stats().get("handler_executions", 0)
    controls = forger.replay_controls(forger.dests)
    for destination in forger.dests:
        forger.send_crafted(destination)
    crafted = len(forger.sent)
    console.log(f"chaos: {crafted} hand-made bad inputs sent; generating {plan.hypothesis_inputs}")
    generated = forger.send_generated(
        forger.dests, plan.hypothesis_inputs, plan.seed, pause_s=0.004
    )
    if not forger.settle(timeout_s=120.0):
        console.log("chaos: not every input to a task was accounted for; announcing anyway")
    view = announcement_destination(WORKERS)
    sent = len(forger.sent)
    forger.send_crafted(view)
    generated += forger.send_generated([view], plan.hypothesis_announcements, plan.seed)
    console.log(f"chaos: {len(forger.sent) - sent} bad announcements published on events:jobs")
    control, figures = _view_checks(cluster, forger, view)
    controls.append(control)
    verdict = forger.verdict(timeout_s=120.0, hypothesis=generated)
    after = cluster.rt.jobs.stats().get("handler_executions", 0)
    console.log(
        f"chaos: bad inputs: {verdict.tried} tried, {verdict.refused} refused, "
        f"{len(verdict.changed_targets)} targets changed, "
        f"{figures.believed} announcements believed by the view; "
        f"{after - before} handler runs meanwhile"
    )
    return controls, verdict, figures


def _view_checks(
    cluster: Cluster, forger: Forger, destination: Destination
) -> tuple[str, ViewFigures]:
    """Whether the view believed a bad announcement, then whether it believes a replay.

    A control job is ended ABANDONED for real after the bad announcements: once the
    view's checkpointed counts counts that genuine announcement, it has seen every bad one before
    it (a connection delivers in publishing order). Then that genuine announcement is
    published again. Returns the control job's id and the figures.
    """
    status = ANNOUNCED_STATUS.value
    settle_s = 2.5 * cluster.settings.heartbeat_interval_s  # until the checkpoint is current
    control, announcement = forger.genuine_announcement(destination)

    def caught_up() -> bool:
        excess = cluster.view_excess(status)
        return excess is not None and excess >= 0

    figures = ViewFigures()
    if not _wait(caught_up, 30.0):
        cluster.problems.append("the coordinator's view did not count a genuine announcement")
        return control, figures
    time.sleep(settle_s)
    figures.believed = cluster.view_excess(status)
    replay = forger.publish_counted(destination, announcement)
    figures.replay_refused = bool(replay.receivers) and sum(replay.counted.values()) >= (
        replay.receivers
    )
    time.sleep(settle_s)
    after = cluster.view_excess(status)
    if after is not None and figures.believed is not None:
        figures.replay_believed = after - figures.believed
    return control, figures


def _report(
    cluster: Cluster,
    plan: ChaosPlan,
    verdict: Verdict,
    view: ViewFigures,
    controls: list[str],
    changed_targets: list[str],
    rate: float,
) -> dict[str, Any]:
    """Check every job and build the figures."""
    rt = cluster.rt
    jobs = dict(cluster.jobs)
    ids = list(jobs)
    pipe = rt.redis.pipeline(transaction=False)
    for job_id in ids:
        pipe.hgetall(KEY_JOB + job_id)  # the record, its causal chain in its link: fields
        pipe.get(RESULT_KEY_PREFIX + job_id)
    replies = pipe.execute()
    failed: Counter[str] = Counter()
    lost: list[str] = []
    duplicates: list[str] = []
    completed = 0
    runs_explained = 0
    by_type: Counter[str] = Counter()
    for index, job_id in enumerate(ids):
        record, meta = replies[2 * index : 2 * index + 2]
        status, result, error, runs = (record.get(f) for f in ("status", "result", "error", "runs"))
        chain = chain_of(record)
        job = jobs[job_id]
        runs_explained += min(int(runs or 0), cluster.settings.max_attempts)
        links = Counter(json.loads(link)["type"] for link in chain)
        if links["RESPONSE"] > 1 or links["EVENT"] > 1:
            duplicates.append(job_id)
        if status not in FINAL:
            lost.append(job_id)
            continue
        if status != JobStatus.COMPLETED.value:
            detail = json.loads(error) if error else None
            failed[str(detail.get("type")) if isinstance(detail, dict) else status] += 1
            continue
        backend = json.loads(meta) if meta else None
        if (json.loads(result) if result else None) != job.expect:
            failed["wrong result in the job record"] += 1
        elif backend is None or backend.get("status") != "SUCCESS":
            failed["no result in the result backend"] += 1
        elif backend.get("result") != job.expect:
            failed["wrong result in the result backend"] += 1
        else:
            completed += 1
            by_type[job.task_type] += 1
    control_runs = 0
    if controls:
        pipe = rt.redis.pipeline(transaction=False)
        for job_id in controls:
            pipe.hget(KEY_JOB + job_id, "runs")
        control_runs = sum(min(int(r or 0), cluster.settings.max_attempts) for r in pipe.execute())
    stats = rt.jobs.stats()
    counts = rt.jobs.counts()
    executions = stats.get("handler_executions", 0)
    unexplained = executions - runs_explained - control_runs
    # Every final status ever recorded: good jobs and replay controls, once each.
    finals_recorded = sum(counts.get(s, 0) for s in FINAL)
    finals_expected = len(ids) - len(lost) + len(controls)
    extra_finals = max(0, finals_recorded - finals_expected)
    changed = sorted(set(verdict.changed_targets) | set(changed_targets))
    bad_ran = len(changed) + max(0, unexplained) + max(0, view.believed or 0)
    refused_raw: dict[str, str] = rt.redis.hgetall(KEY_STATS_REFUSED)  # type: ignore[assignment]
    faults = Counter(f["kind"] for f in cluster.faults)
    recoveries = [
        f["recovery_s"] for f in cluster.faults if f["kind"] in ("worker_kill", "worker_stop")
    ]
    problems = list(cluster.problems)
    if None in recoveries:
        problems.append("a worker fault's jobs did not recover")
    if verdict.announcements and view.believed is None:
        problems.append("could not tell whether the view believed a bad announcement")
    if verdict.unaccounted:
        problems.append(f"{verdict.unaccounted} bad inputs were not seen refused")
    if verdict.errored:
        problems.append(f"bad inputs failed without a typed refusal: {verdict.errored}")
    if verdict.unexpected_reasons:
        problems.append(f"bad inputs refused for another reason: {verdict.unexpected_reasons}")
    if failed:
        problems.append(f"jobs failed: {dict(failed)}")
    if lost:
        _dump_jobs(cluster, lost, "lost.json")
        problems.append(f"{len(lost)} jobs lost (records in lost.json)")
    if duplicates:
        _dump_jobs(cluster, duplicates, "duplicates.json")
    duplicate_results = len(duplicates) + extra_finals
    if unexplained < 0:
        problems.append(f"{-unexplained} handler executions fewer than the jobs' runs")
    report: dict[str, Any] = {
        "submitted": len(ids),
        "completed": completed,
        "failed": dict(failed),
        "lost": len(lost),
        "duplicate_results": duplicate_results,
        "handler_executions": executions,
        "handler_executions_explained": runs_explained + control_runs,
        "redeliveries": stats.get("redeliveries", 0),
        "faults": dict(faults),
        "max_recovery_s": max((r for r in recoveries if r is not None), default=None),
        "recoveries_s": recoveries,
        "bad_inputs_tried": verdict.tried,
        "bad_inputs_ran": bad_ran,
        "bad_inputs_refused": verdict.refused,
        "bad_inputs_hypothesis": verdict.hypothesis,
        "bad_inputs_refused_by_celery": verdict.refused_by_celery,
        "bad_inputs_unaccounted": verdict.unaccounted,
        "bad_inputs_by_kind": verdict.by_kind,
        "bad_inputs_refused_by_reason": verdict.refused_by_reason,
        "bad_inputs_unexpected_reasons": verdict.unexpected_reasons,
        "bad_announcements_tried": verdict.announcements,
        "bad_announcements_refused": verdict.announcements_refused,
        "bad_announcements_believed_by_view": view.believed,
        "announcement_replay_refused": view.replay_refused,
        "announcement_replay_believed_by_view": view.replay_believed,
        "refused": {k: int(v) for k, v in sorted(refused_raw.items())},
        "late_results_ignored": stats.get("stale_results_ignored", 0),
        "late_results_expected": cluster.expected_late_results,
        "rerouted": stats.get("rerouted", 0),
        "resent_stuck": stats.get("resent_stuck", 0),
        "completed_by_type": dict(sorted(by_type.items())),
        "jobs_count": dict(sorted(counts.items())),
        "stream_rate_per_s": round(rate, 2),
        "fault_log": cluster.faults,
        "unexpected_exits": cluster.unexpected_exits,
        "lost_ids": lost[:20],
        "duplicate_ids": duplicates[:20],
        "changed_targets": changed[:20],
        "seed": plan.seed,
    }
    report["ok"] = (
        not lost
        and duplicate_results == 0
        and bad_ran == 0
        and completed == len(ids)
        and not problems
    )
    report["problems"] = problems
    return report


def _dump_jobs(cluster: Cluster, job_ids: list[str], name: str) -> None:
    records = {}
    for job_id in job_ids[:200]:
        records[job_id] = {
            "record": cluster.rt.redis.hgetall(KEY_JOB + job_id),
            "chain": cluster.rt.jobs.chain(job_id),
        }
    path = Path(cluster.deployment.log_dir).parent / name
    path.write_text(json.dumps(records, indent=2, default=str))


# --- output -------------------------------------------------------------------------


def print_report(report: dict[str, Any], console: Console) -> None:
    """A readable table of the figures."""
    table = Table(title="chaos: faults and bad inputs against the running system")
    table.add_column("figure")
    table.add_column("value", justify="right")

    def row(name: str, value: Any) -> None:
        table.add_row(name, str(value))

    row("jobs submitted", report["submitted"])
    row("completed, right result, once", report["completed"])
    for task_type, n in report["completed_by_type"].items():
        row(f"  {task_type}", n)
    row("failed", report["failed"] or 0)
    row("lost", report["lost"])
    row("recorded more than once", report["duplicate_results"])
    row("handler executions", report["handler_executions"])
    row("  explained by good jobs' runs", report["handler_executions_explained"])
    row("  redeliveries run again", report["redeliveries"])
    for kind, n in sorted(report["faults"].items()):
        row(f"fault: {kind}", n)
    row("worker recoveries (s)", ", ".join(f"{r}" for r in report["recoveries_s"]))
    row("max recovery (s)", report["max_recovery_s"])
    for fault in report["fault_log"]:
        if fault["kind"] == "redis_restart":
            row("redis restart: jobs complete again after (s)", fault["resume_s"])
        if fault["kind"] == "redis_full":
            row("redis full (maxmemory, noeviction) for (s)", fault["full_s"])
            row("  submits refused at the caller", fault["submits_refused"])
            row("  submits accepted while full", fault["submits_accepted_while_full"])
            row("  agents shown degraded", fault["agents_degraded"])
            row("  every accepted job done after memory raised (s)", fault["all_done_after_s"])
        if fault["kind"] == "backlog":
            row("backlog: distributors stopped for (s)", fault["stopped_s"])
            row(
                "  envelope TTL / skew allowance (s)",
                f"{fault['envelope_ttl_s']} / {fault['clock_skew_s']}",
            )
            row(
                "  jobs queued during the stop (+ in flight)",
                f"{fault['jobs_queued_during_stop']} (+ {fault['jobs_in_flight_at_stop']})",
            )
            row("  envelopes readmitted (expired in queue)", fault["envelopes_readmitted"])
            row("  all of them done after SIGCONT (s)", fault["all_done_after_s"])
            row("  their attempts", fault["attempts"])
            row("  of them re-sent by the health check", fault["resent_by_health_check"])
        if fault["kind"] == "clock_skew":
            row(f"clock skew: {fault['target']} at {fault['offset_s']:+d} s", "whole run")
            row("  times marked dead", fault["marked_dead"])
            row("  jobs it completed", fault["jobs_completed"])
            row("  envelopes it refused as expired", fault["refused_expired"])
        if fault["kind"] == "burst":
            row(f"burst of {fault['jobs']}: all done after (s)", fault["drain_s"])
    for kind, why in report.get("skipped_faults", {}).items():
        row(f"fault {kind} SKIPPED", why)
    row("jobs re-routed / re-sent stuck", f"{report['rerouted']} / {report['resent_stuck']}")
    row("late results ignored (stale epoch)", report["late_results_ignored"])
    row("bad inputs tried", report["bad_inputs_tried"])
    row("  of them generated by hypothesis", report["bad_inputs_hypothesis"])
    row("  refused", report["bad_inputs_refused"])
    row("  ran (had any effect)", report["bad_inputs_ran"])
    row("  of them final announcements on events:jobs", report["bad_announcements_tried"])
    row("    refused by the coordinator's view", report["bad_announcements_refused"])
    row("    believed by the view", report["bad_announcements_believed_by_view"])
    row(
        "replayed genuine announcement: refused / believed by the view",
        f"{report['announcement_replay_refused']} / "
        f"{report['announcement_replay_believed_by_view']}",
    )
    for reason, n in report["refused"].items():
        row(f"  refusals counted by the tiers (all): {reason}", n)
    row("unexpected process exits", len(report["unexpected_exits"]))
    row("duration (s)", report["duration_s"])
    row("verdict", "OK" if report["ok"] else "FAILED")
    console.print(table)
    for problem in report["problems"]:
        console.print(f"[red]problem:[/] {problem}")
    console.print(f"logs and records: {report['workdir']}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options of ``python -m tools.chaos``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=1000, help="good jobs in all (default 1000)")
    parser.add_argument(
        "--hypothesis",
        type=int,
        default=1000,
        help="generated malformed envelopes for the tasks (1000)",
    )
    parser.add_argument(
        "--announcements",
        type=int,
        default=None,
        help="generated malformed EVENTs announced to the view (a tenth of --hypothesis)",
    )
    parser.add_argument("--worker-kills", type=int, default=3, help="worker SIGKILLs (3)")
    parser.add_argument(
        "--worker-stops", type=int, default=1, help="worker SIGSTOPs past the heartbeat limit (1)"
    )
    parser.add_argument("--distributor-kills", type=int, default=1, help="distributor SIGKILLs (1)")
    parser.add_argument("--redis-restarts", type=int, default=1, help="redis-server SIGKILLs (1)")
    parser.add_argument(
        "--redis-fulls", type=int, default=1, help="episodes of Redis at maxmemory (1)"
    )
    parser.add_argument(
        "--redis-full-s", type=float, default=10.0, help="how long Redis stays full (10 s)"
    )
    parser.add_argument(
        "--backlogs",
        type=int,
        default=1,
        help="distributors SIGSTOPped past the envelope lifetime while jobs come (1)",
    )
    parser.add_argument(
        "--no-clock-skew",
        dest="clock_skew",
        action="store_false",
        help="no extra worker with its clock 45 s behind (libfaketime)",
    )
    parser.add_argument("--bursts", type=int, default=1, help="bursts of jobs at once (1)")
    parser.add_argument(
        "--burst-size", type=int, default=None, help="jobs per burst (a seventh of --jobs, >= 40)"
    )
    parser.add_argument("--rate", type=float, default=8.0, help="steady-stream jobs per second (8)")
    parser.add_argument("--seed", type=int, default=7, help="seeds the workload and hypothesis (7)")
    parser.add_argument("--workdir", type=Path, default=None, help="logs and Redis files")
    return parser.parse_args(argv)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite, print the table and, as the last line, the JSON figures."""
    args = parse_args(argv)
    # Ctrl-C and SIGTERM both end the run cleanly (even when started with SIGINT ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    console = Console()
    try:
        report = run_chaos(
            args.jobs,
            hypothesis_inputs=args.hypothesis,
            hypothesis_announcements=args.announcements,
            worker_kills=args.worker_kills,
            worker_stops=args.worker_stops,
            distributor_kills=args.distributor_kills,
            redis_restarts=args.redis_restarts,
            redis_fulls=args.redis_fulls,
            redis_full_s=args.redis_full_s,
            backlogs=args.backlogs,
            clock_skew=args.clock_skew,
            bursts=args.bursts,
            burst_size=args.burst_size,
            rate_per_s=args.rate,
            seed=args.seed,
            workdir=args.workdir,
            console=console,
        )
    except KeyboardInterrupt:
        console.print("chaos: interrupted; everything it started is stopped")
        return 130
    print_report(report, console)
    print(json.dumps(report, separators=(",", ":"), default=str), flush=True)
    return 0 if report["ok"] else 1


__all__ = ["ChaosPlan", "main", "run_chaos"]

if __name__ == "__main__":
    raise SystemExit(main())
