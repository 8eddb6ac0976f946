"""``make bench``: our pipeline against a bare Celery canvas with the same hops, in one run.

Starts a private redis-server (:class:`~project.local.embedded_redis.EmbeddedRedis`)
and, one after the other on that same Redis, two deployments of the same shape
(one coordinator process, ``distributors`` distributor processes, ``workers``
worker processes, each a Celery worker with ``concurrency`` prefork children):

* **baseline**: ``tools/bench/baseline_app.py``, four no-op Celery tasks chained
  coordinator -> distributor -> worker -> callback with our exact Celery settings;
* **ours**: the full pipeline (signed envelopes, replay protection, job records,
  shared state; each hop a plain function, ``take_in``, ``assign_job``,
  ``execute_work_order``, ``record_result``) running the ``generic`` task type,
  whose handler does nothing but echo. Four Celery tasks per job too: the final
  EVENT rides on Redis pub/sub inside the job-finish script.

For each it measures, after a warm-up: the latency of single jobs on an idle
system (sequential submit + ``get``), then the throughput at saturation (N jobs
submitted at once, timed until every result is in), and during that saturation
run, per job:

* Redis commands (``INFO commandstats`` after ``CONFIG RESETSTAT``; commands run
  inside Lua scripts count too, as Redis counts them);
* Redis round trips: the server's ``total_reads_processed`` (``INFO stats``), the
  read events on client sockets. A request and its reply is one read: a
  pipeline, or a MULTI..EXEC block sent as one, is one round trip, an EVALSHA is
  one however many commands its script runs, a blocking BRPOP is one. This counts
  what every client sends (kombu's connections in pool children, the result
  backend, our own stores, the benchmark's client) with nothing patched into
  them. It can only count too many, never too few: a request that arrives in
  several TCP segments (redis-py writes an argument over 6,000 bytes separately)
  may take several reads. The MONITOR pass below counts such large requests, to
  show the bound;
* Redis server time: the ``usec`` of ``INFO commandstats``, command execution
  only (no parsing, no socket I/O). Redis counts a command run by a Lua script
  both as itself and inside its EVALSHA, so each command's time is scaled by the
  share of its calls made from clients (from the MONITOR pass below) to count it
  once. ``1e6 / usec`` is the jobs/s one Redis could carry if executing commands
  were all it did: an upper bound; the redis-server CPU per job (psutil) gives
  the other, lower one;
* the CPU seconds of every agent process and its pool children (user + system,
  psutil), and the peak RSS of each of those processes (``VmHWM``).

Ratios are ours / baseline. Last, a few sequential jobs run under ``MONITOR``
(then an idle window of the same length, whose rate is taken out): commands per
job by command name (an EVALSHA by its script's name, a command run inside a
script as ``NAME (Lua: script)``) and by sender (``<tier>:main|child`` of the
process whose socket sent it, found with psutil, or ``client``: the benchmark as
an app). ``--breakdown`` prints those tables side by side for both systems: what
ours adds over the baseline, command by command.

``--full`` adds ours' throughput with 1, 2 and 4 worker processes (a fresh
deployment each) and a leak check: RSS of every agent process after 1,000 jobs
against after 20,000. ``--profile DIR`` samples ours with py-spy during an extra
saturation run and prints where the CPU goes (:mod:`tools.bench.profile`).
``--experiment NAMES`` loads what-if patches into ours (``tools/bench/experiments.py``)
to measure a proposed change before making it.

Timing on a 2-core machine (AMD EPYC, load average 3-5 from other work): the
default run takes about three minutes; ``--full`` about 14 minutes (the 20,000-job
leak check about 8 of them, the scaling runs about 4); ``--profile`` adds about 1 minute.

The last line of the output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from celery import Celery
from celery.utils import uuid
from redis import Redis
from rich.console import Console
from rich.table import Table

import project
from project.core.celery_app.config import celery_config
from project.core.constants import COORDINATOR_QUEUE, TASK_SUBMIT
from project.core.settings import Settings
from project.core.state.connections import connect_redis
from project.core.state.jobs import JobStore
from project.core.submits import publish_submit
from project.local.deployment import LocalDeployment
from project.local.embedded_redis import EmbeddedRedis, child_env
from project.local.topology import Service, default_topology
from tools.bench.profile import summarize as summarize_profile

BENCH_KEYS = "bench-k1:" + "b" * 48
REPO_ROOT = Path(__file__).resolve().parents[2]
PROJECT_ROOT = Path(project.__file__).resolve().parent
BASELINE_MODULE = "tools.bench.baseline_app"
EXPERIMENTS_MODULE = "tools.bench.experiments"
BASELINE_SUBMIT = "bench.baseline.submit"
BASELINE_QUEUE = "bq.coordinator"
IDLE_WINDOW_S = 2.0


@dataclass(frozen=True)
class Shape:
    """How many agent processes a deployment has, and their pool size."""

    workers: int = 2
    """Worker-tier processes (``worker.w<n>`` or ``bq.worker.<n>``)."""
    distributors: int = 1
    """Distributor-tier processes."""
    concurrency: int = 2
    """Prefork children per process (``celery worker -c``)."""


@dataclass
class Figures:
    """What one system measured."""

    name: str
    jobs_per_s: float = 0.0
    saturation_s: float = 0.0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    redis_cmds_per_job: float = 0.0
    redis_cmds_per_job_net: float = 0.0
    """Commands per job with the idle background rate (heartbeats, polling) taken out."""
    redis_idle_cmds_per_s: float = 0.0
    redis_top_cmds_per_job: dict[str, float] = field(default_factory=dict)
    redis_cmds_by_command: dict[str, float] = field(default_factory=dict)
    """Calls per job of every command at saturation (``INFO commandstats``)."""
    redis_round_trips_per_job: float = 0.0
    """Read events on client sockets per job at saturation (``total_reads_processed``)."""
    redis_round_trips_per_job_net: float = 0.0
    """The same with the idle rate taken out."""
    redis_idle_round_trips_per_s: float = 0.0
    redis_usec_per_job: float = 0.0
    """Redis command execution time per job, each command counted once (see the module)."""
    redis_usec_by_command: dict[str, float] = field(default_factory=dict)
    """Microseconds per job by command, as ``INFO commandstats`` has them (Lua's inner
    commands also inside their EVALSHA's)."""
    redis_capacity_jobs_per_s: float = 0.0
    """``1e6 / redis_usec_per_job``: jobs/s if executing commands were all Redis did."""
    redis_capacity_jobs_per_s_by_cpu: float = 0.0
    """``1 / redis_cpu_s_per_job``: jobs/s if redis-server's CPU were the only limit."""
    redis_client_cmds_per_job: float = 0.0
    """Commands sent by clients (MONITOR, sequential jobs): Lua's inner calls left out."""
    redis_lua_cmds_per_job: float = 0.0
    """Commands run inside Lua scripts, per job (MONITOR)."""
    redis_round_trips_per_job_sequential: float = 0.0
    """Read events per job during the MONITOR pass (sequential jobs, idle rate out)."""
    redis_large_requests_per_job: float = 0.0
    """Requests over 6,000 bytes per job (MONITOR): each may count as more than one read."""
    redis_large_requests_by_command: dict[str, float] = field(default_factory=dict)
    redis_cmds_by_source: dict[str, float] = field(default_factory=dict)
    """Per job, by who sent them: ``<service>:main``, ``<service>:child``, client, lua
    (MONITOR, sequential jobs, idle rate taken out)."""
    redis_cmds_by_command_and_sender: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per job, command -> ``<tier>:main|child`` or client -> calls (MONITOR, as above);
    a command run by a script is ``NAME (Lua: script)``, sent by its EVALSHA's sender."""
    cpu_s_per_job: float = 0.0
    cpu_s_per_job_by_service: dict[str, float] = field(default_factory=dict)
    redis_cpu_s_per_job: float = 0.0
    peak_rss_mb: float = 0.0
    """Largest peak RSS of any one process (main or pool child)."""
    mean_peak_rss_mb: float = 0.0
    peak_rss_mb_by_service: dict[str, float] = field(default_factory=dict)
    failed_jobs: int = 0


# --- the two systems -------------------------------------------------------------


@dataclass(frozen=True)
class System:
    """One deployment under test: its processes and how the client submits a job."""

    name: str
    services: list[Service]
    env: dict[str, str]
    task_name: str
    queue: str
    make_args: Callable[[int], list[Any]]
    agents: bool
    """True for ours: wait until every agent registered before warming up."""


def _celery_worker(app_module: str, queue: str, node: str, concurrency: int) -> tuple[str, ...]:
    # Same flags as project.local.topology's agent processes.
    return (
        "celery", "-A", app_module, "worker",
        "-Q", queue,
        "-n", node,
        "-c", str(concurrency),
        "--without-gossip", "--without-mingle",
        "-l", "INFO",
    )  # fmt: skip


def baseline_config_json(settings: Settings) -> str:
    """Our Celery settings as JSON, for the baseline app (it sets its own queues)."""
    config = celery_config(settings)
    for name in ("task_queues", "task_routes", "task_default_queue", "beat_schedule"):
        config.pop(name, None)
    return json.dumps(config)


def _tools_python_path() -> str:
    return os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)


def baseline_system(redis_url: str, settings: Settings, shape: Shape) -> System:
    """The bare Celery canvas of ``tools/bench/baseline_app.py``, shaped like ours."""
    worker_queues = [f"bq.worker.{n}" for n in range(1, shape.workers + 1)]
    services = [
        Service(
            "b-coordinator",
            _celery_worker(
                BASELINE_MODULE, "bq.coordinator", "b-coordinator@%h", shape.concurrency
            ),
            tier="baseline",
        )
    ]
    services += [
        Service(
            f"b-distributor{n}",
            _celery_worker(
                BASELINE_MODULE, "bq.distributor", f"b-distributor{n}@%h", shape.concurrency
            ),
            tier="baseline",
        )
        for n in range(1, shape.distributors + 1)
    ]
    services += [
        Service(
            f"b-w{n}",
            _celery_worker(BASELINE_MODULE, queue, f"b-w{n}@%h", shape.concurrency),
            tier="baseline",
        )
        for n, queue in enumerate(worker_queues, start=1)
    ]
    env = child_env(
        AGENTS_REDIS_URL=redis_url,
        PYTHONPATH=_tools_python_path(),
        BENCH_BASELINE_CONFIG=baseline_config_json(settings),
        BENCH_WORKER_QUEUES=",".join(worker_queues),
    )
    return System(
        "baseline",
        services,
        env,
        task_name=BASELINE_SUBMIT,
        queue=BASELINE_QUEUE,
        make_args=lambda i: [{"echo": i}],
        agents=False,
    )


def ours_system(redis_url: str, shape: Shape, experiments: Sequence[str] = ()) -> System:
    """The full pipeline (no beat: health checks are periodic, not per job).

    ``experiments`` names what-if patches of ``tools/bench/experiments.py`` to load
    into every agent process (to measure a proposed change before making it).
    """
    services = default_topology(
        workers=tuple(f"w{n}" for n in range(1, shape.workers + 1)),
        distributors=shape.distributors,
        concurrency=shape.concurrency,
        beat=False,
    )
    env = child_env(AGENTS_REDIS_URL=redis_url, AGENTS_A2A_KEYS=BENCH_KEYS, AGENTS_DEV_MODE="false")
    if experiments:
        env.update(
            AGENTS_HANDLER_MODULES=EXPERIMENTS_MODULE,
            PYTHONPATH=_tools_python_path(),
            BENCH_EXPERIMENTS=",".join(experiments),
        )
    return System(
        "ours",
        services,
        env,
        task_name=TASK_SUBMIT,
        queue=COORDINATOR_QUEUE,
        make_args=lambda i: ["generic", {"echo": i}],
        agents=True,
    )


def client_app(settings: Settings) -> Celery:
    """The benchmark's own Celery client (our settings), independent of ``project.app``."""
    config = celery_config(settings)
    config.pop("beat_schedule", None)
    client = Celery("bench-client", set_as_current=False)
    client.conf.update(config)
    return client


# --- measuring -------------------------------------------------------------------


def _processes(deployment: LocalDeployment) -> dict[str, list[psutil.Process]]:
    found: dict[str, list[psutil.Process]] = {}
    for name, popen in deployment.processes.items():
        try:
            main = psutil.Process(popen.pid)
            found[name] = [main, *main.children(recursive=True)]
        except psutil.NoSuchProcess:
            found[name] = []
    return found


def cpu_seconds(deployment: LocalDeployment) -> dict[str, float]:
    """User + system CPU of each service: its main process, its children, reaped children."""
    totals: dict[str, float] = {}
    for name, procs in _processes(deployment).items():
        total = 0.0
        for proc in procs:
            try:
                t = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += t.user + t.system + t.children_user + t.children_system
        totals[name] = total
    return totals


def _status_kb(pid: int, field_name: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_mb(deployment: LocalDeployment, *, peak: bool) -> dict[str, list[float]]:
    """RSS in MB of every process of each service: peak (``VmHWM``) or current."""
    found: dict[str, list[float]] = {}
    for name, procs in _processes(deployment).items():
        values: list[float] = []
        for proc in procs:
            kb = _status_kb(proc.pid, "VmHWM" if peak else "VmRSS")
            if kb is None:
                try:
                    kb = proc.memory_info().rss // 1024
                except psutil.NoSuchProcess:
                    continue
            values.append(kb / 1024)
        found[name] = values
    return found


BENCH_COMMANDS = frozenset({"config|resetstat", "info", "config"})
"""The benchmark's own commands, left out of every count."""


@dataclass(frozen=True)
class ServerStats:
    """What one ``INFO all`` says: per command since ``CONFIG RESETSTAT``, reads so far."""

    calls: dict[str, int]
    usec: dict[str, int]
    reads: int
    """``total_reads_processed``: read events on client sockets (this INFO's included)."""


def server_stats(redis: Redis) -> ServerStats:
    """Commands, their time and the read events, in one call (the benchmark's left out)."""
    raw: dict[str, Any] = redis.info("all")
    calls: dict[str, int] = {}
    usec: dict[str, int] = {}
    for key, value in raw.items():
        if not key.startswith("cmdstat_"):
            continue
        name = key.removeprefix("cmdstat_")
        if name in BENCH_COMMANDS:
            continue
        calls[name] = int(value["calls"])
        usec[name] = int(value["usec"])
    return ServerStats(calls, usec, int(raw.get("total_reads_processed", 0)))


def commandstats(redis: Redis) -> dict[str, int]:
    """Calls per command since the last ``CONFIG RESETSTAT`` (bench's own calls left out)."""
    return server_stats(redis).calls


def reads_between(before: ServerStats, after: ServerStats) -> int:
    """Read events between two :func:`server_stats` calls, the later call's own left out."""
    return after.reads - before.reads - 1


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


class Driver:
    """Submits jobs to one running system and waits for their results."""

    def __init__(self, client: Celery, system: System) -> None:
        self.client = client
        self.system = system
        self._next = 0
        # Ours is submitted as an app's submit_task.delay() does it: intent first.
        self._store = (
            JobStore(connect_redis(str(client.conf.broker_url)), result_ttl_s=3600)
            if system.agents
            else None
        )

    def _send(self, producer: Any) -> tuple[int, Any]:
        self._next += 1
        i = self._next
        args = self.system.make_args(i)
        if self._store is not None:
            call = {"args": args, "kwargs": {}}
            job_id = uuid()
            self._store.record_intents({job_id: call})
            return i, publish_submit(self.client, job_id, call, producer=producer)
        # Like ours, the baseline's submit stores no result of its own.
        result = self.client.send_task(
            self.system.task_name,
            args=args,
            queue=self.system.queue,
            producer=producer,
            ignore_result=True,
        )
        result.ignored = False
        return i, result

    def burst(self, count: int, timeout_s: float) -> tuple[float, int]:
        """Submit ``count`` jobs at once; return (seconds until all results are in, failures)."""
        started = time.perf_counter()
        with self.client.producer_or_acquire() as producer:
            sent = [self._send(producer) for _ in range(count)]
        failures = 0
        deadline = started + timeout_s
        for i, result in sent:
            failures += not self._check(i, result, max(1.0, deadline - time.perf_counter()))
        return time.perf_counter() - started, failures

    def one(self, timeout_s: float = 30.0) -> tuple[float, bool]:
        """Submit one job and wait for it; return (seconds, ok)."""
        started = time.perf_counter()
        with self.client.producer_or_acquire() as producer:
            i, result = self._send(producer)
        ok = self._check(i, result, timeout_s)
        return time.perf_counter() - started, ok

    @staticmethod
    def _check(i: int, result: Any, timeout_s: float) -> bool:
        try:
            value = result.get(timeout=timeout_s, propagate=True)
        except Exception:
            return False
        return isinstance(value, dict) and value.get("result") == i


@contextmanager
def running(system: System, log_dir: Path, console: Console) -> Iterator[LocalDeployment]:
    """Start a system's processes, wait until they serve, stop them whatever happens."""
    deployment = LocalDeployment(system.services, env=system.env, log_dir=log_dir, workdir=log_dir)
    try:
        deployment.start()
        if system.agents:
            deployment.wait_ready(timeout_s=120)
        console.log(f"{system.name}: {len(deployment.processes)} processes up (logs in {log_dir})")
        yield deployment
    finally:
        deployment.stop()


def warm_up(driver: Driver, jobs: int, timeout_s: float = 120.0) -> None:
    """Run jobs until the system answers, then a burst that reaches every pool child.

    Raises:
        RuntimeError: the system does not complete jobs.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        _, ok = driver.one(timeout_s=10.0)
        if ok:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{driver.system.name} completes no job; see its logs")
    _, failures = driver.burst(jobs, timeout_s=timeout_s)
    for _ in range(10):
        driver.one()
    if failures:
        raise RuntimeError(f"{driver.system.name}: {failures} of {jobs} warm-up jobs failed")


def measure_latency(driver: Driver, jobs: int, figures: Figures) -> None:
    """Sequential submit + get on an otherwise idle system."""
    samples: list[float] = []
    for _ in range(jobs):
        seconds, ok = driver.one()
        figures.failed_jobs += not ok
        samples.append(seconds * 1000)
    samples.sort()
    figures.p50_ms = percentile(samples, 0.50)
    figures.p90_ms = percentile(samples, 0.90)
    figures.p99_ms = percentile(samples, 0.99)


def measure_saturation(
    driver: Driver,
    deployment: LocalDeployment,
    redis: Redis,
    redis_process: psutil.Process | None,
    jobs: int,
    figures: Figures,
) -> ServerStats:
    """Throughput, Redis commands, round trips and time, CPU and peak RSS of ``jobs`` jobs.

    Returns the burst's command counts and times (:func:`finish_usec` needs them).
    """
    redis.config_resetstat()
    idle_before = server_stats(redis)
    time.sleep(IDLE_WINDOW_S)
    idle = server_stats(redis)
    figures.redis_idle_cmds_per_s = sum(idle.calls.values()) / IDLE_WINDOW_S
    figures.redis_idle_round_trips_per_s = reads_between(idle_before, idle) / IDLE_WINDOW_S

    cpu_before = cpu_seconds(deployment)
    redis_cpu_before = _proc_cpu(redis_process)
    redis.config_resetstat()
    before = server_stats(redis)
    seconds, failures = driver.burst(jobs, timeout_s=max(120.0, jobs / 10))
    after = server_stats(redis)
    cpu_after = cpu_seconds(deployment)
    redis_cpu = _proc_cpu(redis_process) - redis_cpu_before

    figures.failed_jobs += failures
    figures.saturation_s = seconds
    figures.jobs_per_s = jobs / seconds
    total_calls = sum(after.calls.values())
    figures.redis_cmds_per_job = total_calls / jobs
    figures.redis_cmds_per_job_net = max(
        0.0, (total_calls - figures.redis_idle_cmds_per_s * seconds) / jobs
    )
    ranked = sorted(after.calls.items(), key=lambda kv: kv[1], reverse=True)
    figures.redis_top_cmds_per_job = {name: round(n / jobs, 2) for name, n in ranked[:12]}
    figures.redis_cmds_by_command = {name: round(n / jobs, 3) for name, n in ranked}
    figures.redis_usec_by_command = {
        name: round(us / jobs, 3)
        for name, us in sorted(after.usec.items(), key=lambda kv: kv[1], reverse=True)
    }
    reads = reads_between(before, after)
    figures.redis_round_trips_per_job = reads / jobs
    figures.redis_round_trips_per_job_net = max(
        0.0, (reads - figures.redis_idle_round_trips_per_s * seconds) / jobs
    )
    finish_usec(after, {}, jobs, figures)
    by_service = {
        name: (cpu_after.get(name, 0.0) - cpu_before.get(name, 0.0)) / jobs for name in cpu_after
    }
    figures.cpu_s_per_job_by_service = {k: round(v, 6) for k, v in by_service.items()}
    figures.cpu_s_per_job = sum(by_service.values())
    figures.redis_cpu_s_per_job = redis_cpu / jobs
    figures.redis_capacity_jobs_per_s_by_cpu = jobs / redis_cpu if redis_cpu > 0 else 0.0
    record_peak_rss(deployment, figures)
    return after


def _base_command(name: str) -> str:
    """``client|setname`` -> ``client``: how MONITOR's first word names a commandstats entry."""
    return name.split("|", 1)[0].lower()


def finish_usec(
    stats: ServerStats, lua_share: dict[str, float], jobs: int, figures: Figures
) -> None:
    """Redis time per job with each command counted once, and the jobs/s it allows.

    ``lua_share`` is, per command (lower case), the share of its calls made inside Lua
    scripts (from MONITOR); that share of its time is already in the scripts' EVALSHA.
    """
    usec = sum(
        us * (1.0 - lua_share.get(_base_command(name), 0.0)) for name, us in stats.usec.items()
    )
    figures.redis_usec_per_job = usec / jobs
    figures.redis_capacity_jobs_per_s = 1e6 / figures.redis_usec_per_job if usec else 0.0


def record_peak_rss(deployment: LocalDeployment, figures: Figures) -> None:
    """Largest and mean peak RSS over every process of the deployment."""
    peaks = rss_mb(deployment, peak=True)
    every = [v for values in peaks.values() for v in values]
    figures.peak_rss_mb = max(every, default=0.0)
    figures.mean_peak_rss_mb = statistics.fmean(every) if every else 0.0
    figures.peak_rss_mb_by_service = {
        name: round(max(values, default=0.0), 1) for name, values in peaks.items()
    }


def _proc_cpu(process: psutil.Process | None) -> float:
    if process is None:
        return 0.0
    try:
        t = process.cpu_times()
    except psutil.NoSuchProcess:
        return 0.0
    return float(t.user + t.system)


def _redis_sources(deployment: LocalDeployment, redis_port: int) -> dict[int, str]:
    """Local port of every connection to Redis -> ``<service>:main|child`` or ``client``."""
    sources: dict[int, str] = {}
    owners = [
        (f"{name}:{'main' if i == 0 else 'child'}", proc)
        for name, procs in _processes(deployment).items()
        for i, proc in enumerate(procs)
    ]
    owners.append(("client", psutil.Process()))
    for owner, proc in owners:
        try:
            connections = proc.net_connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for conn in connections:
            if conn.raddr and conn.raddr.port == redis_port:
                sources[conn.laddr.port] = owner
    return sources


SCRIPT_COMMANDS = frozenset({"EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO"})
CONTAINER_COMMANDS = frozenset(
    {"ACL", "CLIENT", "CLUSTER", "COMMAND", "CONFIG", "FUNCTION", "LATENCY", "MEMORY"}
    | {"MODULE", "OBJECT", "PUBSUB", "SCRIPT", "SLOWLOG", "XINFO"}
)
LARGE_REQUEST_BYTES = 6000
"""redis-py writes an argument longer than this on its own (``buffer_cutoff``)."""


def script_names() -> dict[str, str]:
    """SHA1 -> name of every Lua script file of ours, as EVALSHA names it.

    ``job_finish`` for :mod:`project.core.state`'s, ``checkpoint.put`` for the others.
    """
    names: dict[str, str] = {}
    for path in sorted(PROJECT_ROOT.rglob("*.lua")):
        sha = hashlib.sha1(path.read_bytes()).hexdigest()
        names[sha] = path.stem if path.parent.name == "lua" else f"{path.parent.name}.{path.stem}"
    return names


def tier_of(service: str) -> str:
    """A service's tier, the same for ours and the baseline (``b-w1`` -> ``worker``)."""
    name = service.removeprefix("b-")
    for tier in ("coordinator", "distributor", "beat"):
        if name.startswith(tier):
            return tier
    return "worker"


def command_label(command: str, scripts: dict[str, str]) -> str:
    """A MONITOR line's command, named: ``EVALSHA <sha> ...`` -> ``EVALSHA job_finish``,
    ``CLIENT SETNAME x`` -> ``CLIENT SETNAME``, ``hset k f v`` -> ``HSET``."""
    words = command.split(" ", 2)
    name = words[0].upper() if words and words[0] else "?"
    if name.startswith("EVALSHA") and len(words) > 1:
        return f"{name} {scripts.get(words[1].lower(), 'script ' + words[1][:8])}"
    if name in CONTAINER_COMMANDS and len(words) > 1:
        return f"{name} {words[1].upper()}"
    return name


@dataclass
class Tally:
    """Commands seen under MONITOR in one window."""

    calls: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    """(command label, sender: ``<tier>:main|child`` or ``client``, source) -> calls.
    The source is ``<service>:main|child``, ``client``, ``lua`` or ``other``."""
    large: Counter[str] = field(default_factory=Counter)
    """Requests over :data:`LARGE_REQUEST_BYTES`, by command label."""


def tally(
    commands: Sequence[dict[str, Any]], sources: dict[int, str], scripts: dict[str, str]
) -> Tally:
    """Count MONITOR lines by command and sender; a script's commands go to its EVALSHA.

    A script runs atomically, so the lines of its commands (client ``lua``) come
    right after its EVALSHA: they are credited to the same sender.
    """
    found = Tally()
    script, script_sender = "script", "other"
    for command in commands:
        text = str(command.get("command", ""))
        label = command_label(text, scripts)
        if label.split(" ", 1)[0] in ("INFO", "CONFIG"):
            continue  # the benchmark's own
        if command.get("client_type") == "lua":
            found.calls[(f"{label} (Lua: {script})", script_sender, "lua")] += 1
            continue
        port = str(command.get("client_port", ""))
        source = sources.get(int(port), "other") if port.isdigit() else "other"
        service, _, role = source.partition(":")
        sender = f"{tier_of(service)}:{role}" if role else source
        if label.split(" ", 1)[0] in SCRIPT_COMMANDS:
            script, script_sender = label.split(" ", 1)[-1], sender
        found.calls[(label, sender, source)] += 1
        if len(text) > LARGE_REQUEST_BYTES:
            found.large[label] += 1
    return found


def _monitor_while(
    redis: Redis, redis_url: str, action: Callable[[], None]
) -> tuple[list[dict[str, Any]], float, int]:
    """Run ``action`` under MONITOR: the commands Redis ran meanwhile, seconds, read events."""
    watcher = Redis.from_url(redis_url, decode_responses=True)
    seen: list[dict[str, Any]] = []
    stop = threading.Event()

    def watch() -> None:
        with watcher.monitor() as monitor:  # type: ignore[no-untyped-call]
            while not stop.is_set():
                seen.append(monitor.next_command())

    thread = threading.Thread(target=watch, name="bench-monitor", daemon=True)
    thread.start()
    time.sleep(0.5)
    before = server_stats(redis)
    started = time.time()
    action()
    ended = time.time()
    after = server_stats(redis)
    stop.set()
    poke = Redis.from_url(redis_url)
    poke.ping()  # one more line, so the watcher sees the stop
    poke.close()
    thread.join(timeout=5)
    watcher.close()
    window = [c for c in seen if started <= float(c.get("time", 0)) <= ended]
    return window, ended - started, reads_between(before, after)


def measure_by_sender(
    driver: Driver,
    deployment: LocalDeployment,
    redis: Redis,
    redis_url: str,
    jobs: int,
    figures: Figures,
    *,
    settle_s: float = 3.0,
    idle_s: float = 6.0,
) -> dict[str, float]:
    """Who sends what, per job: MONITOR over ``jobs`` sequential jobs, less the idle rate.

    First a quiet pause of ``settle_s`` (so that what earlier runs left to do, such as
    the agents' state checkpoints a heartbeat later, is done), then ``idle_s`` idle
    under MONITOR for the background rate, then the jobs.

    Returns, per command (lower case), the share of its calls made inside Lua scripts.
    """
    scripts = script_names()

    def run_jobs() -> None:
        for _ in range(jobs):
            figures.failed_jobs += not driver.one()[1]

    time.sleep(settle_s)
    idle_lines, idle_window_s, idle_reads = _monitor_while(
        redis, redis_url, lambda: time.sleep(idle_s)
    )
    busy_lines, busy_s, busy_reads = _monitor_while(redis, redis_url, run_jobs)
    port = int(redis.connection_pool.connection_kwargs["port"])
    sources = _redis_sources(deployment, port)
    busy, idle = tally(busy_lines, sources, scripts), tally(idle_lines, sources, scripts)
    scale = busy_s / idle_window_s if idle_window_s else 0.0

    def per_job(busy_n: float, idle_n: float) -> float:
        return (busy_n - idle_n * scale) / jobs

    by_command: dict[str, dict[str, float]] = {}
    by_source: Counter[str] = Counter()
    for key in busy.calls.keys() | idle.calls.keys():
        label, sender, source = key
        value = per_job(busy.calls[key], idle.calls[key])
        by_source[source] += value  # type: ignore[assignment]
        row = by_command.setdefault(label, {})
        row[sender] = row.get(sender, 0.0) + value
    figures.redis_cmds_by_command_and_sender = {
        label: {s: round(v, 2) for s, v in sorted(row.items()) if abs(v) >= 0.005}
        for label, row in sorted(by_command.items(), key=lambda kv: -sum(kv[1].values()))
        if abs(sum(row.values())) >= 0.005
    }
    figures.redis_cmds_by_source = {
        k: round(v, 2) for k, v in sorted(by_source.items(), key=lambda kv: -kv[1])
    }
    figures.redis_lua_cmds_per_job = by_source["lua"]
    figures.redis_client_cmds_per_job = sum(by_source.values()) - by_source["lua"]
    figures.redis_round_trips_per_job_sequential = per_job(busy_reads, idle_reads)
    figures.redis_large_requests_per_job = per_job(busy.large.total(), idle.large.total())
    figures.redis_large_requests_by_command = {
        label: round(per_job(busy.large[label], idle.large[label]), 2)
        for label in sorted(busy.large.keys() | idle.large.keys())
    }
    in_lua: Counter[str] = Counter()
    every: Counter[str] = Counter()
    for (label, _, source), n in busy.calls.items():
        name = label.split(" ", 1)[0].lower()
        every[name] += n
        in_lua[name] += n if source == "lua" else 0
    return {name: in_lua[name] / every[name] for name in every if every[name]}


def measure_system(
    system: System,
    client: Celery,
    redis: Redis,
    redis_process: psutil.Process | None,
    *,
    log_dir: Path,
    saturation_jobs: int,
    latency_jobs: int,
    warmup_jobs: int,
    monitor_jobs: int = 50,
    redis_url: str = "",
    heartbeat_s: float = 2.0,
    console: Console,
) -> Figures:
    """Latency, then saturation, then the MONITOR pass, of one system on fresh processes.

    ``heartbeat_s`` (ours' heartbeat interval) sets the MONITOR pass's quiet pause and
    idle window (the same for both systems).
    """
    figures = Figures(system.name)
    with running(system, log_dir, console) as deployment:
        driver = Driver(client, system)
        warm_up(driver, warmup_jobs)
        console.log(f"{system.name}: warm; {latency_jobs} sequential jobs")
        measure_latency(driver, latency_jobs, figures)
        console.log(f"{system.name}: {saturation_jobs} jobs at once")
        burst = measure_saturation(
            driver, deployment, redis, redis_process, saturation_jobs, figures
        )
        if monitor_jobs:
            console.log(f"{system.name}: MONITOR, idle then {monitor_jobs} sequential jobs")
            lua_share = measure_by_sender(
                driver, deployment, redis, redis_url, monitor_jobs, figures,
                settle_s=heartbeat_s + 1.0, idle_s=3 * heartbeat_s,
            )  # fmt: skip
            finish_usec(burst, lua_share, saturation_jobs, figures)
    console.log(
        f"{system.name}: {figures.jobs_per_s:.0f} jobs/s, p50 {figures.p50_ms:.1f} ms, "
        f"{figures.redis_cmds_per_job:.1f} Redis commands/job, "
        f"{figures.redis_round_trips_per_job:.1f} round trips/job, "
        f"{figures.redis_usec_per_job:.0f} Redis us/job"
    )
    return figures


def measure_scaling(
    client: Celery,
    redis: Redis,
    redis_url: str,
    base: Shape,
    worker_counts: Sequence[int],
    *,
    jobs: int,
    log_root: Path,
    console: Console,
) -> dict[str, dict[str, float]]:
    """Ours' throughput at saturation with each number of worker processes."""
    scaling: dict[str, dict[str, float]] = {}
    for count in worker_counts:
        redis.flushdb()
        shape = Shape(workers=count, distributors=base.distributors, concurrency=base.concurrency)
        system = ours_system(redis_url, shape)
        with running(system, log_root / f"scaling-{count}", console) as deployment:
            driver = Driver(client, system)
            warm_up(driver, 50)
            before = cpu_seconds(deployment)
            seconds, failures = driver.burst(jobs, timeout_s=max(120.0, jobs / 10))
            after = cpu_seconds(deployment)
        cpu = sum(after.values()) - sum(before.values())
        scaling[str(count)] = {
            "jobs_per_s": round(jobs / seconds, 1),
            "cpu_s_per_job": round(cpu / jobs, 6),
            "failed_jobs": failures,
        }
        console.log(f"scaling: {count} worker process(es): {jobs / seconds:.0f} jobs/s")
    return scaling


def measure_leak(
    client: Celery,
    redis: Redis,
    redis_url: str,
    shape: Shape,
    *,
    total_jobs: int,
    first_jobs: int,
    log_dir: Path,
    console: Console,
) -> dict[str, Any]:
    """Current RSS of every ours process after ``first_jobs`` and after ``total_jobs``."""
    first_jobs = min(first_jobs, total_jobs)
    redis.flushdb()
    system = ours_system(redis_url, shape)
    with running(system, log_dir, console) as deployment:
        driver = Driver(client, system)
        warm_up(driver, 50)
        failures = driver.burst(first_jobs, timeout_s=max(120.0, first_jobs / 10))[1]
        early = rss_mb(deployment, peak=False)
        done = first_jobs
        while done < total_jobs:
            batch = min(2_000, total_jobs - done)
            failures += driver.burst(batch, timeout_s=max(120.0, batch / 10))[1]
            done += batch
            console.log(f"leak check: {done}/{total_jobs} jobs")
        late = rss_mb(deployment, peak=False)
    per_service = {
        name: {
            "after_first_mb": round(sum(early.get(name, [])), 1),
            "after_total_mb": round(sum(late.get(name, [])), 1),
        }
        for name in late
    }
    early_total = sum(sum(v) for v in early.values())
    late_total = sum(sum(v) for v in late.values())
    return {
        "first_jobs": first_jobs,
        "total_jobs": total_jobs,
        "rss_after_first_mb": round(early_total, 1),
        "rss_after_total_mb": round(late_total, 1),
        "growth_mb": round(late_total - early_total, 1),
        "growth_kb_per_1000_jobs": round(
            (late_total - early_total) * 1024 / max(1, total_jobs - first_jobs) * 1000, 1
        ),
        "per_service": per_service,
        "failed_jobs": failures,
    }


def profile_ours(
    client: Celery,
    redis: Redis,
    redis_url: str,
    shape: Shape,
    *,
    jobs: int,
    out_dir: Path,
    console: Console,
    experiments: Sequence[str] = (),
) -> dict[str, str]:
    """Sample every ours process with py-spy during a saturation burst (collapsed stacks).

    Raises:
        RuntimeError: py-spy is not installed.
    """
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        raise RuntimeError("py-spy is not installed (pip install -e '.[dev]')")
    out_dir.mkdir(parents=True, exist_ok=True)
    redis.flushdb()
    system = ours_system(redis_url, shape, experiments)
    outputs: dict[str, str] = {}
    with running(system, out_dir / "logs", console) as deployment:
        driver = Driver(client, system)
        warm_up(driver, 50)
        samplers: list[subprocess.Popen[bytes]] = []
        try:
            for name, popen in deployment.processes.items():
                target = out_dir / f"{name}.collapsed"
                outputs[name] = str(target)
                samplers.append(
                    subprocess.Popen(
                        [py_spy, "record", "--pid", str(popen.pid), "--subprocesses",
                         "--format", "raw", "--rate", "250", "--nonblocking", "--gil",
                         "-o", str(target)],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )  # fmt: skip
            time.sleep(1.0)  # let py-spy attach
            seconds, _ = driver.burst(jobs, timeout_s=max(120.0, jobs / 5))
            console.log(f"profile: {jobs} jobs in {seconds:.1f} s under py-spy")
        finally:
            for sampler in samplers:
                sampler.send_signal(2)  # SIGINT: py-spy writes what it has and exits
            for sampler in samplers:
                try:
                    sampler.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    sampler.kill()
                    sampler.wait(timeout=10)
    return outputs


# --- the run ---------------------------------------------------------------------


def _ratio(ours: float, baseline: float) -> float:
    return round(ours / baseline, 3) if baseline else float("nan")


def _machine() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "os": platform.platform(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def run_bench(
    *,
    saturation_jobs: int = 2_000,
    latency_jobs: int = 200,
    warmup_jobs: int = 100,
    monitor_jobs: int = 50,
    workers: int = 2,
    distributors: int = 1,
    concurrency: int = 2,
    full: bool = False,
    scaling_workers: Sequence[int] = (1, 2, 4),
    leak_jobs: int = 20_000,
    leak_first_jobs: int = 1_000,
    profile_dir: Path | None = None,
    experiments: Sequence[str] = (),
    workdir: Path | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run the benchmark and return every figure (what the last output line prints as JSON).

    Args:
        saturation_jobs: jobs submitted at once for throughput, commands, CPU and RSS.
        latency_jobs: jobs submitted one after the other for p50 / p99 latency.
        warmup_jobs: jobs run first on each deployment, not measured.
        monitor_jobs: sequential jobs watched with MONITOR to split commands per job by
            command and sender, and to count Lua's commands once in Redis time; 0
            skips it (Redis time then counts them twice: an upper bound).
        workers: worker processes of both systems.
        distributors: distributor processes of both systems.
        concurrency: prefork children of every process.
        full: also measure scaling over ``scaling_workers`` and the leak check.
        scaling_workers: worker process counts for the scaling runs.
        leak_jobs: jobs of the leak check (RSS compared with after ``leak_first_jobs``).
        leak_first_jobs: the leak check's early point.
        profile_dir: if set, sample ours with py-spy during an extra saturation run.
        experiments: what-if patches (``tools/bench/experiments.py``) loaded into ours.
        workdir: where Redis and the logs live (default: a new temporary folder).
        console: where progress and tables go.
    """
    console = console or Console()
    root = workdir or Path(tempfile.mkdtemp(prefix="agents-bench-"))
    shape = Shape(workers=workers, distributors=distributors, concurrency=concurrency)
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": _machine(),
        "shape": asdict(shape),
        "saturation_jobs": saturation_jobs,
        "latency_jobs": latency_jobs,
        "experiments": list(experiments),
        "monitor_jobs": monitor_jobs,
        "baseline_hops": 4,
    }
    started = time.monotonic()
    console.log(f"bench: embedded Redis and logs in {root}")
    with EmbeddedRedis(root / "redis") as server:
        settings = Settings(redis_url=server.url)
        client = client_app(settings)
        redis = Redis.from_url(server.url, decode_responses=True)
        redis_process = psutil.Process(server.process.pid) if server.process else None
        try:
            systems = [
                baseline_system(server.url, settings, shape),
                ours_system(server.url, shape, experiments),
            ]
            measured: dict[str, Figures] = {}
            for system in systems:
                redis.flushdb()
                measured[system.name] = measure_system(
                    system,
                    client,
                    redis,
                    redis_process,
                    log_dir=root / system.name,
                    saturation_jobs=saturation_jobs,
                    latency_jobs=latency_jobs,
                    warmup_jobs=warmup_jobs,
                    monitor_jobs=monitor_jobs,
                    redis_url=server.url,
                    heartbeat_s=settings.heartbeat_interval_s,
                    console=console,
                )
            if full:
                report["scaling"] = measure_scaling(
                    client, redis, server.url, shape, scaling_workers,
                    jobs=saturation_jobs, log_root=root, console=console,
                )  # fmt: skip
                report["leak"] = measure_leak(
                    client, redis, server.url, shape,
                    total_jobs=leak_jobs, first_jobs=leak_first_jobs,
                    log_dir=root / "leak", console=console,
                )  # fmt: skip
            if profile_dir is not None:
                files = profile_ours(
                    client, redis, server.url, shape,
                    jobs=saturation_jobs, out_dir=profile_dir, console=console,
                    experiments=experiments,
                )  # fmt: skip
                shares = summarize_profile(Path(f) for f in files.values())
                report["profile"] = {"files": files, "shares_percent": shares}
        finally:
            redis.close()
            client.close()
    base, ours = measured["baseline"], measured["ours"]
    report.update(
        {
            "baseline": asdict(base),
            "ours": asdict(ours),
            "jobs_per_s": round(ours.jobs_per_s, 1),
            "baseline_jobs_per_s": round(base.jobs_per_s, 1),
            "throughput_ratio": _ratio(ours.jobs_per_s, base.jobs_per_s),
            "p50_ms": round(ours.p50_ms, 2),
            "baseline_p50_ms": round(base.p50_ms, 2),
            "p50_ratio": _ratio(ours.p50_ms, base.p50_ms),
            "p99_ms": round(ours.p99_ms, 2),
            "baseline_p99_ms": round(base.p99_ms, 2),
            "p99_ratio": _ratio(ours.p99_ms, base.p99_ms),
            "redis_cmds_per_job": round(ours.redis_cmds_per_job, 2),
            "baseline_redis_cmds_per_job": round(base.redis_cmds_per_job, 2),
            "redis_cmds_ratio": _ratio(ours.redis_cmds_per_job, base.redis_cmds_per_job),
            "redis_round_trips_per_job": round(ours.redis_round_trips_per_job, 2),
            "baseline_redis_round_trips_per_job": round(base.redis_round_trips_per_job, 2),
            "redis_round_trips_ratio": _ratio(
                ours.redis_round_trips_per_job, base.redis_round_trips_per_job
            ),
            "redis_usec_per_job": round(ours.redis_usec_per_job, 1),
            "baseline_redis_usec_per_job": round(base.redis_usec_per_job, 1),
            "redis_usec_ratio": _ratio(ours.redis_usec_per_job, base.redis_usec_per_job),
            "redis_capacity_jobs_per_s": round(ours.redis_capacity_jobs_per_s),
            "baseline_redis_capacity_jobs_per_s": round(base.redis_capacity_jobs_per_s),
            "cpu_s_per_job": round(ours.cpu_s_per_job, 6),
            "baseline_cpu_s_per_job": round(base.cpu_s_per_job, 6),
            "cpu_ratio": _ratio(ours.cpu_s_per_job, base.cpu_s_per_job),
            "peak_rss_mb": round(ours.peak_rss_mb, 1),
            "baseline_peak_rss_mb": round(base.peak_rss_mb, 1),
            "rss_ratio": _ratio(ours.peak_rss_mb, base.peak_rss_mb),
            "failed_jobs": base.failed_jobs + ours.failed_jobs,
            "elapsed_s": round(time.monotonic() - started, 1),
            "workdir": str(root),
        }
    )
    return report


def print_report(report: dict[str, Any], console: Console, *, breakdown: bool = False) -> None:
    """The tables: ours against baseline, then scaling and the leak check if measured.

    ``breakdown`` adds Redis commands per job command by command, for both systems.
    """
    base, ours = report["baseline"], report["ours"]
    shape = report["shape"]
    table = Table(
        title=(
            f"ours vs bare Celery ({report.get('baseline_hops', 4)} tasks per job): "
            f"{shape['workers']} worker / {shape['distributors']} "
            f"distributor / 1 coordinator processes, concurrency {shape['concurrency']}"
        )
    )
    table.add_column("metric")
    table.add_column("baseline", justify="right")
    table.add_column("ours", justify="right")
    table.add_column("ours / baseline", justify="right")
    rows: list[tuple[str, str, str]] = [
        (f"jobs/s at saturation ({report['saturation_jobs']} jobs)", "jobs_per_s", "{:.0f}"),
        (f"p50 latency, idle ({report['latency_jobs']} jobs), ms", "p50_ms", "{:.2f}"),
        ("p90 latency, idle, ms", "p90_ms", "{:.2f}"),
        ("p99 latency, idle, ms", "p99_ms", "{:.2f}"),
        ("Redis commands / job", "redis_cmds_per_job", "{:.1f}"),
        ("Redis commands / job, idle rate taken out", "redis_cmds_per_job_net", "{:.1f}"),
        ("Redis commands / s when idle", "redis_idle_cmds_per_s", "{:.0f}"),
        ("Redis commands sent by clients / job (MONITOR)", "redis_client_cmds_per_job", "{:.1f}"),
        ("Redis commands inside Lua / job (MONITOR)", "redis_lua_cmds_per_job", "{:.1f}"),
        ("Redis round trips / job (server read events)", "redis_round_trips_per_job", "{:.1f}"),
        ("Redis round trips / job, idle rate taken out", "redis_round_trips_per_job_net", "{:.1f}"),
        (
            "Redis round trips / job, sequential (MONITOR pass)",
            "redis_round_trips_per_job_sequential",
            "{:.1f}",
        ),
        ("  requests over 6 KB / job (may read as 2+)", "redis_large_requests_per_job", "{:.2f}"),
        ("Redis command time / job, us (each once)", "redis_usec_per_job", "{:.0f}"),
        ("  jobs/s one Redis carries at that time", "redis_capacity_jobs_per_s", "{:.0f}"),
        ("redis-server CPU ms / job", "redis_cpu_s_per_job", "{:.3f}"),
        ("  jobs/s one Redis carries at that CPU", "redis_capacity_jobs_per_s_by_cpu", "{:.0f}"),
        ("agent CPU ms / job", "cpu_s_per_job", "{:.2f}"),
        ("peak RSS, largest process, MB", "peak_rss_mb", "{:.1f}"),
        ("peak RSS, mean per process, MB", "mean_peak_rss_mb", "{:.1f}"),
    ]
    for label, key, fmt in rows:
        scale = 1000.0 if key.startswith(("cpu_", "redis_cpu_")) else 1.0
        b, o = base[key] * scale, ours[key] * scale
        table.add_row(label, fmt.format(b), fmt.format(o), f"{o / b:.2f}x" if b else "-")
    table.add_row("failed jobs", str(base["failed_jobs"]), str(ours["failed_jobs"]), "")
    console.print(table)

    cmds = Table(title="Redis commands per job at saturation (top commands)")
    cmds.add_column("system")
    cmds.add_column("commands")
    for name in ("baseline", "ours"):
        top = report[name]["redis_top_cmds_per_job"]
        cmds.add_row(name, ", ".join(f"{k} {v:g}" for k, v in top.items()))
    console.print(cmds)

    sources = Table(title="Redis commands per job by sender (MONITOR, sequential jobs)")
    sources.add_column("system")
    sources.add_column("sender: commands")
    for name in ("baseline", "ours"):
        split = report[name]["redis_cmds_by_source"]
        sources.add_row(name, ", ".join(f"{k} {v:g}" for k, v in split.items()))
    console.print(sources)

    if breakdown:
        print_breakdown(report, console)

    cpu = Table(title="CPU ms per job by process (saturation)")
    cpu.add_column("system")
    cpu.add_column("per process")
    for name in ("baseline", "ours"):
        split = report[name]["cpu_s_per_job_by_service"]
        cpu.add_row(name, ", ".join(f"{k} {v * 1000:.2f}" for k, v in split.items()))
    console.print(cpu)

    if "scaling" in report:
        scaling = Table(
            title=f"ours: throughput by worker processes ({report['saturation_jobs']} jobs)"
        )
        scaling.add_column("worker processes", justify="right")
        scaling.add_column("jobs/s", justify="right")
        scaling.add_column("CPU ms / job", justify="right")
        for count, row in report["scaling"].items():
            scaling.add_row(count, f"{row['jobs_per_s']:.0f}", f"{row['cpu_s_per_job'] * 1000:.2f}")
        console.print(scaling)
    if "leak" in report:
        leak = report["leak"]
        table = Table(title="ours: RSS of all agent processes (leak check)")
        table.add_column("process")
        table.add_column(f"after {leak['first_jobs']} jobs, MB", justify="right")
        table.add_column(f"after {leak['total_jobs']} jobs, MB", justify="right")
        for name, row in leak["per_service"].items():
            table.add_row(name, f"{row['after_first_mb']:.1f}", f"{row['after_total_mb']:.1f}")
        table.add_row(
            "all", f"{leak['rss_after_first_mb']:.1f}", f"{leak['rss_after_total_mb']:.1f}"
        )
        console.print(table)
    if "profile" in report:
        shares = report["profile"]["shares_percent"]
        prof = Table(title="ours: where the agent processes spend CPU (py-spy --gil samples)")
        prof.add_column("cost")
        for name in shares:
            prof.add_column(name, justify="right")
        categories = [c for c in shares["all"] if c != "samples"]
        for category in categories:
            prof.add_row(category, *(f"{shares[name].get(category, 0.0):.1f}%" for name in shares))
        prof.add_row("samples", *(f"{shares[name]['samples']:.0f}" for name in shares))
        console.print(prof)
    machine = report["machine"]
    console.print(
        f"{report['date']} on {machine['cpu']} ({machine['cores']} cores, "
        f"{machine['memory_gb']} GB), load at start {machine['loadavg_at_start']}; "
        f"{report['elapsed_s']} s; logs in {report['workdir']}"
    )


def print_breakdown(report: dict[str, Any], console: Console) -> None:
    """Redis commands per job, command by command: what ours adds over the baseline."""
    base, ours = report["baseline"], report["ours"]
    table = Table(
        title=(
            f"Redis commands per job by command, saturation ({report['saturation_jobs']} jobs, "
            "INFO commandstats; Lua's commands also inside their EVALSHA's time)"
        )
    )
    for column in ("command", "baseline", "ours", "ours - baseline", "baseline us", "ours us"):
        table.add_column(column, justify="left" if column == "command" else "right")
    names = set(base["redis_cmds_by_command"]) | set(ours["redis_cmds_by_command"])

    def added(name: str) -> float:
        return float(ours["redis_cmds_by_command"].get(name, 0.0)) - float(
            base["redis_cmds_by_command"].get(name, 0.0)
        )

    for name in sorted(names, key=lambda n: (-added(n), n)):
        b = base["redis_cmds_by_command"].get(name, 0.0)
        o = ours["redis_cmds_by_command"].get(name, 0.0)
        table.add_row(
            name,
            f"{b:.2f}",
            f"{o:.2f}",
            f"{o - b:+.2f}",
            f"{base['redis_usec_by_command'].get(name, 0.0):.1f}",
            f"{ours['redis_usec_by_command'].get(name, 0.0):.1f}",
        )
    table.add_row(
        "all",
        f"{base['redis_cmds_per_job']:.2f}",
        f"{ours['redis_cmds_per_job']:.2f}",
        f"{ours['redis_cmds_per_job'] - base['redis_cmds_per_job']:+.2f}",
        f"{sum(base['redis_usec_by_command'].values()):.1f}",
        f"{sum(ours['redis_usec_by_command'].values()):.1f}",
    )
    console.print(table)

    rows_b = base["redis_cmds_by_command_and_sender"]
    rows_o = ours["redis_cmds_by_command_and_sender"]
    cells_b, cells_o = _by_sender_and_command(rows_b), _by_sender_and_command(rows_o)
    senders = Table(
        title=(
            f"Redis commands per job by sender and command (MONITOR, "
            f"{report.get('monitor_jobs', '')} sequential jobs, idle rate taken out; a "
            "script's commands go to its EVALSHA's sender; rows under 0.05 left out)"
        )
    )
    senders.add_column("sender")
    senders.add_column("command")
    for column in ("baseline", "ours", "ours - baseline"):
        senders.add_column(column, justify="right")
    for sender in sorted(set(cells_b) | set(cells_o), key=_sender_order):
        b_rows, o_rows = cells_b.get(sender, {}), cells_o.get(sender, {})
        b_all, o_all = sum(b_rows.values()), sum(o_rows.values())
        senders.add_row(
            sender, "(all)", f"{b_all:.2f}", f"{o_all:.2f}", f"{o_all - b_all:+.2f}", style="bold"
        )
        labels = set(b_rows) | set(o_rows)
        for label in sorted(labels, key=lambda k: (-o_rows.get(k, 0.0), k)):
            b, o = b_rows.get(label, 0.0), o_rows.get(label, 0.0)
            if abs(b) < 0.05 and abs(o) < 0.05:
                continue
            senders.add_row("", label, f"{b:.2f}", f"{o:.2f}", f"{o - b:+.2f}")
    console.print(senders)


_SENDERS = ("client", "coordinator", "distributor", "worker")


def _sender_order(sender: str) -> tuple[int, str]:
    tier = sender.split(":", 1)[0]
    return (_SENDERS.index(tier) if tier in _SENDERS else len(_SENDERS), sender)


def _by_sender_and_command(rows: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """``{command: {sender: n}}`` turned around: ``{sender: {command: n}}``."""
    turned: dict[str, dict[str, float]] = {}
    for label, split in rows.items():
        for sender, n in split.items():
            turned.setdefault(sender, {})[label] = n
    return turned


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The benchmark's command line."""
    parser = argparse.ArgumentParser(
        prog="bench", description="Our pipeline against a bare Celery canvas with the same hops."
    )
    parser.add_argument("--jobs", type=int, default=2_000, help="saturation jobs (2000)")
    parser.add_argument("--latency-jobs", type=int, default=200, help="sequential jobs (200)")
    parser.add_argument("--warmup-jobs", type=int, default=100, help="unmeasured jobs (100)")
    parser.add_argument(
        "--monitor-jobs", type=int, default=50, help="jobs watched with MONITOR (50; 0: skip)"
    )
    parser.add_argument("--workers", type=int, default=2, help="worker processes (2)")
    parser.add_argument("--distributors", type=int, default=1, help="distributor processes (1)")
    parser.add_argument("--concurrency", type=int, default=2, help="children per process (2)")
    parser.add_argument(
        "--full", action="store_true", help="add scaling (1, 2, 4 workers) and the leak check"
    )
    parser.add_argument("--leak-jobs", type=int, default=20_000, help="leak check jobs (20000)")
    parser.add_argument(
        "--profile", type=Path, default=None, metavar="DIR",
        help="also sample ours with py-spy; collapsed stacks go to DIR",
    )  # fmt: skip
    parser.add_argument(
        "--experiment", default="", metavar="NAMES",
        help="what-if patches for ours, comma separated (see tools/bench/experiments.py)",
    )  # fmt: skip
    parser.add_argument(
        "--breakdown", action="store_true",
        help="also print Redis commands per job command by command, ours against baseline",
    )  # fmt: skip
    parser.add_argument("--workdir", type=Path, default=None, help="Redis and logs (temp dir)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark from the command line; 0 if no job failed."""
    args = parse_args(argv)
    console = Console()
    report = run_bench(
        saturation_jobs=args.jobs,
        latency_jobs=args.latency_jobs,
        warmup_jobs=args.warmup_jobs,
        monitor_jobs=args.monitor_jobs,
        workers=args.workers,
        distributors=args.distributors,
        concurrency=args.concurrency,
        full=args.full,
        leak_jobs=args.leak_jobs,
        profile_dir=args.profile,
        experiments=[n.strip() for n in args.experiment.split(",") if n.strip()],
        workdir=args.workdir,
        console=console,
    )
    print_report(report, console, breakdown=args.breakdown)
    print(json.dumps(report, separators=(",", ":")), flush=True)
    return 0 if report["failed_jobs"] == 0 else 1
