"""The operators' command line: ``python -m project`` or ``agents``.

Every command reads the same settings as the agents (``AGENTS_*`` variables, ``.env``).
Errors are one red line on stderr and a non-zero exit code; ``agents --debug ...``
shows the traceback instead.
"""

from __future__ import annotations

import functools
import json
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar
from urllib.parse import urlsplit, urlunsplit

import typer
from rich.console import Console
from rich.json import JSON
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from project.core.errors import AgentsError, describe_validation_error

app = typer.Typer(
    help="Coordinator -> Distributor -> Worker agents on Celery.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

P = ParamSpec("P")
R = TypeVar("R")

_state = {"debug": False}


def _out() -> Console:
    return Console(highlight=False)


def _err() -> Console:
    return Console(stderr=True, highlight=False)


def _redact(url: str) -> str:
    """A Redis URL (or each address of a Sentinel URL) without its password."""
    if ";" in url:
        return ";".join(_redact(chunk) for chunk in url.split(";"))
    parts = urlsplit(url)
    if "sentinel_password=" in parts.query:
        query = re.sub(r"(sentinel_password=)[^&]*", r"\1***", parts.query)
        parts = parts._replace(query=query)
    if parts.password is None:
        return urlunsplit(parts)
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def _describe(exc: BaseException) -> str:
    """One line that says what went wrong."""
    from celery.exceptions import TimeoutError as CeleryTimeoutError
    from kombu.exceptions import OperationalError
    from pydantic import ValidationError
    from redis.exceptions import AuthenticationError, RedisError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    from project.core.settings import Settings

    def url() -> str:
        try:
            return _redact(Settings().redis_url)
        except Exception:
            return "AGENTS_REDIS_URL"

    if isinstance(exc, AuthenticationError):
        return f"Redis at {url()} refused the password: {exc}"
    if isinstance(exc, RedisConnectionError | RedisTimeoutError | OperationalError):
        return f"cannot reach Redis at {url()}: {exc}"
    if isinstance(exc, RedisError):
        return f"Redis error: {exc}"
    if isinstance(exc, CeleryTimeoutError):
        return f"timed out: {exc}"
    if isinstance(exc, ValidationError):
        return f"invalid settings or input: {describe_validation_error(exc, limit=100)}"
    if isinstance(exc, AgentsError):
        return f"{type(exc).__name__}: {exc}"
    message = str(exc) or repr(exc)
    return f"{type(exc).__name__}: {message}".replace("\n", " ")


def friendly_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn any error into one red line and exit code 1 (``--debug`` re-raises)."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:
            if _state["debug"]:
                raise
            _err().print(f"[bold red]error:[/] {_describe(exc)}", soft_wrap=True, markup=True)
            raise typer.Exit(1) from None

    return wrapper


def _fail(message: str, code: int = 1) -> typer.Exit:
    _err().print(f"[bold red]error:[/] {message}", soft_wrap=True)
    return typer.Exit(code)


def _settings() -> Any:
    from project.core.settings import Settings

    return Settings()


def _redis(settings: Any) -> Any:
    """A client that fails fast: an operator waits seconds, not the agents' 30 s of retries."""
    from project.core.state.connections import client_from_url

    return client_from_url(settings.redis_url, socket_connect_timeout=3, socket_timeout=10)


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 120:
        return f"{seconds:.1f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _when(ms: int | None) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Coordinator -> Distributor -> Worker agents on Celery."""
    _state["debug"] = debug


# --- demo and up ---------------------------------------------------------------------


@app.command()
def demo(jobs: int = typer.Option(300, help="How many jobs to run.")) -> None:
    """Start an embedded Redis and every tier, run a mixed workload, print a summary."""
    from project.local.demo import run_demo

    raise typer.Exit(run_demo(jobs))


@app.command()
@friendly_errors
def up(
    workers: Annotated[str, typer.Option(help="Worker ids, comma-separated.")] = "w1,w2,w3",
    distributors: Annotated[int, typer.Option(min=1, help="Distributor processes.")] = 2,
    concurrency: Annotated[int, typer.Option(min=1, help="Pool size of each process.")] = 2,
    flower_port: Annotated[int, typer.Option(help="Flower's port (127.0.0.1).")] = 5555,
    gateway_port: Annotated[int, typer.Option(help="The A2A gateway's port (127.0.0.1).")] = 8700,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve /metrics from port N (N+1, ... per agent).")
    ] = None,
    workdir: Annotated[
        Path | None, typer.Option(help="Folder for Redis data and logs (default: a temp dir).")
    ] = None,
) -> None:
    """Embedded Redis + every tier + beat + Flower + the A2A gateway, in one command.
    Ctrl-C stops everything."""
    from project.local.up import UpOptions, run_up

    ids = tuple(w.strip() for w in workers.split(",") if w.strip())
    if not ids:
        raise _fail("--workers names no worker")
    options = UpOptions(
        workers=ids,
        distributors=distributors,
        concurrency=concurrency,
        flower_port=flower_port,
        gateway_port=gateway_port,
        metrics_port=metrics_port,
        workdir=workdir,
    )
    raise typer.Exit(run_up(options, _out()))


# --- submit ---------------------------------------------------------------------------


def _parse_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _fail(
            f"{what} is not valid JSON: {exc.msg} (line {exc.lineno} col {exc.colno})"
        ) from None
    if not isinstance(value, dict):
        raise _fail(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _read_jobs(path: Path, priority: str) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            job = _parse_object(line, f"{path}:{number}")
            if not isinstance(job.get("task_type"), str) or not isinstance(
                job.get("payload"), dict
            ):
                raise _fail(f"{path}:{number}: needs a string 'task_type' and an object 'payload'")
            unknown = set(job) - {
                "task_type",
                "payload",
                "priority",
                "requirements",
                "deadline_s",
                "input_timeout_s",
            }
            if unknown:
                raise _fail(f"{path}:{number}: unknown fields {sorted(unknown)}")
            job.setdefault("priority", priority)
            jobs.append(job)
    if not jobs:
        raise _fail(f"{path} holds no job")
    return jobs


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=_out(),
    )


@app.command()
@friendly_errors
def submit(
    task_type: Annotated[str | None, typer.Argument(help="compute, data_processing, ...")] = None,
    payload: Annotated[str | None, typer.Argument(help="The job's payload, a JSON object.")] = None,
    priority: Annotated[str, typer.Option(help="urgent, high, normal or low.")] = "normal",
    tags: Annotated[str, typer.Option(help="Tags the worker must have, comma-separated.")] = "",
    deadline_s: Annotated[
        float | None, typer.Option(help="How long the job may wait for a worker.")
    ] = None,
    input_timeout_s: Annotated[
        float | None,
        typer.Option(help="How long an agent may wait for input before it fails."),
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the result(s).")] = False,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow",
            help="Print the job's events as they come, then its result; stop (exit 0) "
            "when it waits for input.",
        ),
    ] = False,
    timeout: Annotated[
        float,
        typer.Option(help="Seconds to wait with --wait; with --follow, without a new event."),
    ] = 60.0,
    file: Annotated[
        Path | None,
        typer.Option("--file", "-f", help="JSON Lines: one {task_type, payload, ...} per line."),
    ] = None,
) -> None:
    """Submit one job, or every job of a JSON Lines file (with a progress bar).

    With --follow the exit code is 0 once the job completed or waits for input, 1 if it
    failed, was canceled or went silent for --timeout seconds.
    """
    from project.core.models import Priority

    if priority not in {p.value for p in Priority}:
        raise _fail(f"--priority must be one of {', '.join(p.value for p in Priority)}")
    if file is not None:
        if task_type is not None or payload is not None:
            raise _fail("give either TASK_TYPE PAYLOAD_JSON or --file, not both")
        if follow:
            raise _fail("--follow follows one job: give TASK_TYPE PAYLOAD_JSON, not --file")
        _submit_file(_read_jobs(file, priority), wait=wait, timeout=timeout)
        return
    if task_type is None or payload is None:
        raise _fail("give TASK_TYPE and PAYLOAD_JSON, or --file jobs.jsonl")
    job: dict[str, Any] = {
        "task_type": task_type,
        "payload": _parse_object(payload, "PAYLOAD_JSON"),
        "priority": priority,
    }
    if tags:
        job["requirements"] = {"tags": [t.strip() for t in tags.split(",") if t.strip()]}
    if deadline_s is not None:
        job["deadline_s"] = deadline_s
    if input_timeout_s is not None:
        job["input_timeout_s"] = input_timeout_s
    from project.client import submit_many

    (result,) = submit_many([job])
    out = _out()
    out.print(f"submitted job [bold]{result.id}[/]")
    if follow:
        _follow_to_answer(_runtime(_settings()), result.id, None, idle_s=timeout)
        return
    if not wait:
        return
    value = result.get(timeout=timeout)
    out.print(JSON.from_data(value))


def _submit_file(jobs: list[dict[str, Any]], *, wait: bool, timeout: float) -> None:
    from celery.exceptions import TimeoutError as CeleryTimeoutError

    from project.client import submit_many

    results = []
    with _progress() as progress:
        sent = progress.add_task("submitting", total=len(jobs))
        for start in range(0, len(jobs), 100):
            batch = jobs[start : start + 100]
            results += submit_many(batch)
            progress.advance(sent, len(batch))
        if wait:
            done = progress.add_task("completing", total=len(results))
            deadline = time.monotonic() + timeout
            outcomes: dict[str, int] = {}
            for result in results:
                try:
                    result.get(timeout=max(0.01, deadline - time.monotonic()), propagate=False)
                except CeleryTimeoutError:
                    outcomes["timed out"] = outcomes.get("timed out", 0) + 1
                    continue
                finally:
                    progress.advance(done)
                kind = "completed" if result.successful() else type(result.result).__name__
                outcomes[kind] = outcomes.get(kind, 0) + 1
    out = _out()
    out.print(f"submitted {len(results)} jobs; first {results[0].id}, last {results[-1].id}")
    if wait:
        table = Table(title="outcomes")
        table.add_column("outcome")
        table.add_column("jobs", justify="right")
        for kind, n in sorted(outcomes.items()):
            table.add_row(kind, str(n))
        out.print(table)
        if set(outcomes) != {"completed"}:
            raise typer.Exit(1)


# --- status ---------------------------------------------------------------------------


def _queue_depths(redis: Any, queues: list[str]) -> dict[str, dict[int, int]]:
    from project.core.celery_app.broker_keys import broker_keys

    keys = broker_keys()
    pipe = redis.pipeline(transaction=False)
    for queue in queues:
        for step in keys.priority_steps:
            pipe.llen(keys.priority_list(queue, step))
    counts = iter(pipe.execute())
    return {queue: {step: int(next(counts)) for step in keys.priority_steps} for queue in queues}


def _redis_memory(redis: Any) -> dict[str, Any] | None:
    """Redis's memory use against ``maxmemory`` (None if INFO is not allowed)."""
    try:
        info = redis.info("memory")
    except Exception:
        return None
    used, limit = int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))
    policy = str(info.get("maxmemory_policy", ""))
    return {
        "used_bytes": used,
        "maxmemory_bytes": limit,
        "policy": policy,
        # With noeviction, Redis refuses writes that could grow it once used > maxmemory.
        "full": bool(limit) and used >= limit and policy == "noeviction",
    }


def collect_status(redis: Any, settings: Any) -> dict[str, Any]:
    """Everything ``agents status`` shows, as plain data (read from Redis)."""
    from project.core.celery_app.broker_keys import broker_keys
    from project.core.constants import (
        COORDINATOR_QUEUE,
        DISTRIBUTOR_QUEUE,
        KEY_JOBS_OPEN,
        KEY_STATS_REFUSED,
    )
    from project.core.state.connections import write_refusal
    from project.core.state.jobs import JobStore
    from project.core.state.registry import AgentRegistry

    registry = AgentRegistry(redis)
    snapshot = registry.snapshot()  # heartbeat ages on Redis's clock, not this host's
    cards, dead = snapshot.cards, snapshot.dead
    workers = sorted(a for a, c in cards.items() if c.tier == "worker")
    loads = registry.loads(workers) if workers else {}
    agents = []
    for agent_id, card in sorted(cards.items(), key=lambda kv: (kv[1].tier, kv[0])):
        mark = snapshot.degraded.get(agent_id) if snapshot.is_degraded(agent_id) else None
        if agent_id in dead:
            health = "dead"
        elif not snapshot.is_live(agent_id, settings.heartbeat_timeout_s):
            health = "silent"
        else:
            health = "degraded" if mark is not None else "live"
        agents.append(
            {
                "id": agent_id,
                "tier": card.tier,
                "hostname": card.hostname,
                "queue": card.queue,
                "concurrency": card.concurrency,
                "health": health,
                "heartbeat_age_s": snapshot.heartbeat_age_s(agent_id),
                "dead": agent_id in dead,
                "open_jobs": loads.get(agent_id),
                "degraded": None
                if mark is None
                else {
                    "write_refused_s_ago": round(max(0, snapshot.now_ms - mark.at_ms) / 1000, 1),
                    "reason": write_refusal(mark.error) or mark.error,
                },
            }
        )
    queues = [COORDINATOR_QUEUE, DISTRIBUTOR_QUEUE] + [cards[w].queue for w in workers]
    store = JobStore(redis, result_ttl_s=settings.result_ttl_s)
    refused: dict[str, str] = redis.hgetall(KEY_STATS_REFUSED)
    return {
        "agents": agents,
        "redis_memory": _redis_memory(redis),
        "queues": _queue_depths(redis, queues),
        "unacked": int(redis.hlen(broker_keys().unacked)),
        "jobs": store.counts(),
        "open_jobs": int(redis.zcard(KEY_JOBS_OPEN)),
        "stats": store.stats(),
        "refused": {reason: int(n) for reason, n in refused.items()},
    }


@app.command()
@friendly_errors
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Agents of every tier with their health, queue depths and job counts."""
    from project.core.models import JobStatus

    settings = _settings()
    report = collect_status(_redis(settings), settings)
    out = _out()
    if as_json:
        print(json.dumps(report, indent=2, sort_keys=True))
        return
    agents = Table(title=f"agents (Redis {_redact(settings.redis_url)})")
    for column in ("agent", "tier", "host", "queue", "pool", "health", "last heartbeat", "dead"):
        agents.add_column(column)
    agents.add_column("open jobs", justify="right")
    colors = {"live": "green", "degraded": "magenta", "silent": "yellow", "dead": "red"}
    for agent in report["agents"]:
        agents.add_row(
            agent["id"],
            agent["tier"],
            agent["hostname"],
            agent["queue"],
            str(agent["concurrency"]),
            f"[{colors[agent['health']]}]{agent['health']}[/]",
            _ago(agent["heartbeat_age_s"]),
            "yes" if agent["dead"] else "no",
            "-" if agent["open_jobs"] is None else str(agent["open_jobs"]),
        )
    out.print(agents if report["agents"] else "[yellow]no agent is registered[/]")
    for agent in report["agents"]:
        if agent["degraded"]:
            out.print(
                f"[magenta]{agent['id']} is degraded:[/] {agent['degraded']['reason']}, "
                f"{agent['degraded']['write_refused_s_ago']} s ago; it waits and retries"
            )
    memory = report["redis_memory"]
    if memory and memory["maxmemory_bytes"]:
        line = (
            f"Redis memory: {memory['used_bytes'] / 2**20:.1f} MiB used of maxmemory "
            f"{memory['maxmemory_bytes'] / 2**20:.1f} MiB ({memory['policy']})"
        )
        if memory["full"]:
            line += (
                " [red]FULL: writes are refused; submits fail, accepted jobs wait. "
                "Raise maxmemory or free memory.[/]"
            )
        out.print(line)

    queues = Table(title="queue depths")
    queues.add_column("queue")
    queues.add_column("waiting", justify="right")
    queues.add_column("by priority (urgent/high/normal/low)", justify="right")
    for queue, depths in report["queues"].items():
        queues.add_row(queue, str(sum(depths.values())), "/".join(str(n) for n in depths.values()))
    queues.add_row("[dim]delivered, not yet acked[/]", str(report["unacked"]), "")
    out.print(queues)

    jobs = Table(title="jobs (that ever reached each status)")
    jobs.add_column("status")
    jobs.add_column("jobs", justify="right")
    for job_status in JobStatus:
        jobs.add_row(job_status.value, str(report["jobs"].get(job_status.value, 0)))
    jobs.add_row("[bold]open now[/]", str(report["open_jobs"]))
    for name, n in sorted(report["stats"].items()):
        jobs.add_row(f"[dim]{name}[/]", str(n))
    for reason, n in sorted(report["refused"].items()):
        jobs.add_row(f"[dim]refused envelopes: {reason}[/]", str(n))
    out.print(jobs)


# --- watch ----------------------------------------------------------------------------


def _format_event(channel: str, data: str) -> str:
    try:
        event = json.loads(data)
    except ValueError:
        return f"{channel}  {data}"
    stamp = datetime.now(UTC).strftime("%H:%M:%S.%f")[:-3]
    if not isinstance(event, dict):
        return f"{stamp}  {channel}  {data}"
    if "job_id" in event:
        rest = " ".join(
            f"{k}={v}" for k, v in event.items() if k not in ("job_id", "status") and v != ""
        )
        return f"{stamp}  job    {event['job_id']}  {event.get('status', '?'):<11} {rest}"
    if "agent_id" in event:
        return f"{stamp}  agent  {event['agent_id']}  {event.get('event', '?')}"
    return f"{stamp}  {channel}  {data}"


def _published(
    redis: Any, channels: list[str], seconds: float | None, *, idle_s: float = 0.5
) -> Iterator[tuple[str, str] | None]:
    """Messages on ``channels`` as ``(channel, data)``, and None after each ``idle_s``
    without one."""
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(*channels)
    deadline = None if seconds is None else time.monotonic() + seconds
    try:
        while deadline is None or time.monotonic() < deadline:
            message = pubsub.get_message(timeout=idle_s)
            if message is not None and message.get("type") == "message":
                yield str(message["channel"]), str(message["data"])
            else:
                yield None
    finally:
        pubsub.close()


class _ProgressTail:
    """Reads on in the event logs of the jobs ``watch`` saw start running, for their step
    updates and custom events (status changes come by pub/sub)."""

    def __init__(self, redis: Any) -> None:
        self._redis = redis
        self._cursors: dict[str, str] = {}

    def __bool__(self) -> bool:
        return bool(self._cursors)

    def saw(self, job_id: str, status: str) -> None:
        """Follow a job that started running; forget one that stopped."""
        if status == "IN_PROGRESS":
            self._cursors.setdefault(job_id, self._run_start(job_id))
        else:
            self._cursors.pop(job_id, None)

    def _run_start(self, job_id: str) -> str:
        """The cursor of the run's IN_PROGRESS event: its progress events come after."""
        from project.core.constants import KEY_JOB_LOG

        newest = self._redis.xrevrange(KEY_JOB_LOG + job_id, "+", "-", count=200)
        for entry_id, fields in newest:
            if fields.get("k") == "status" and '"IN_PROGRESS"' in fields.get("d", ""):
                return str(entry_id)
        return str(newest[0][0]) if newest else "0-0"

    def read(self, job_id: str | None = None) -> list[tuple[str, Any]]:
        """New progress events of every followed job (or of ``job_id``), one round trip."""
        from project.core.constants import KEY_JOB_LOG
        from project.core.state.joblog import JobLogEvent

        streams = {
            KEY_JOB_LOG + job: cursor
            for job, cursor in self._cursors.items()
            if job_id in (None, job)
        }
        if not streams:
            return []
        found: list[tuple[str, Any]] = []
        for key, entries in self._redis.xread(streams, count=100) or []:
            job = str(key)[len(KEY_JOB_LOG) :]
            for entry_id, fields in entries:
                self._cursors[job] = str(entry_id)
                if fields.get("k") in ("update", "custom"):
                    data = json.loads(fields.get("d", "{}"))
                    event = JobLogEvent(
                        id=entry_id,
                        ms=int(fields.get("ms", 0)),
                        kind=fields["k"],
                        data=data if isinstance(data, dict) else {"value": data},
                    )
                    found.append((job, event))
        return found


def _format_progress(job_id: str, event: Any) -> str:
    head, _ = _event_text(event)
    return f"{_clock(event.ms)}  job    {job_id}  {event.kind:<11} {head}"


@app.command()
@friendly_errors
def watch(
    count: Annotated[int | None, typer.Option(help="Stop after N events.")] = None,
    seconds: Annotated[float | None, typer.Option(help="Stop after S seconds.")] = None,
    jobs: Annotated[bool, typer.Option(help="Show job events.")] = True,
    agents: Annotated[bool, typer.Option(help="Show agent events.")] = True,
    progress: Annotated[
        bool, typer.Option(help="Show running agents' step updates and custom events too.")
    ] = True,
) -> None:
    """Print job and agent state changes as they happen (Redis pub/sub). Ctrl-C stops.

    A job that waits for input is shown with its interrupts (ids and values); with
    --progress, a running agent's step updates and custom events come in between.
    """
    from project.core.constants import CHANNEL_AGENTS, CHANNEL_JOBS

    channels = [c for c, on in ((CHANNEL_JOBS, jobs), (CHANNEL_AGENTS, agents)) if on]
    if not channels:
        raise _fail("nothing to watch: both --no-jobs and --no-agents given")
    settings = _settings()
    redis = _redis(settings)
    tail = _ProgressTail(redis) if jobs and progress else None
    out = _out()
    out.print(f"watching {', '.join(channels)} on {_redact(settings.redis_url)} (Ctrl-C stops)")
    seen = 0
    idle_s = 0.25 if tail is not None else 0.5
    try:
        for message in _published(redis, channels, seconds, idle_s=idle_s):
            for line, counts in _watch_lines(message, tail, redis, settings):
                if counts and count is not None and seen >= count:
                    break  # an event's own lines (its interrupts) are still printed
                out.print(line, markup=False, soft_wrap=True)
                seen += counts
            sys.stdout.flush()
            if count is not None and seen >= count:
                break
    except KeyboardInterrupt:
        pass
    out.print(f"{seen} events")


def _watch_lines(
    message: tuple[str, str] | None, tail: _ProgressTail | None, redis: Any, settings: Any
) -> list[tuple[str, bool]]:
    """What ``watch`` prints for a message (or a quiet spell): ``(line, is an event)``."""
    lines: list[tuple[str, bool]] = []
    if message is None:
        if tail:
            lines += [(_format_progress(job, event), True) for job, event in tail.read()]
        return lines
    channel, data = message
    try:
        event = json.loads(data)
    except ValueError:
        event = None
    job_id = event.get("job_id") if isinstance(event, dict) else None
    status = str(event.get("status", "")) if isinstance(event, dict) else ""
    if tail is not None and isinstance(job_id, str):
        # Progress the job made before this change comes first.
        lines += [(_format_progress(job, e), True) for job, e in tail.read(job_id)]
        tail.saw(job_id, status)
    lines.append((_format_event(channel, data), True))
    if isinstance(job_id, str) and status == "INPUT_REQUIRED":
        from project.core.state.jobs import JobStore

        record = JobStore(redis, result_ttl_s=settings.result_ttl_s).get(job_id)
        pending = record.interrupts if record is not None else []
        indent = " " * len(f"00:00:00.000  job    {job_id}  ")  # under the status
        lines += [(indent + line, False) for line in _interrupt_lines(pending)]
    return lines


# --- job ------------------------------------------------------------------------------


@app.command()
@friendly_errors
def job(
    job_id: Annotated[str, typer.Argument(help="The job id (the AsyncResult id).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    last: Annotated[int, typer.Option(min=0, help="How many of its last events to show.")] = 10,
) -> None:
    """A job's record, what it waits for, its last events and its causal chain of A2A
    envelopes."""
    from project.core.models import JobStatus

    settings = _settings()
    rt = _runtime(settings)
    store = rt.jobs
    record = store.get(job_id)
    if record is None:
        raise _fail(
            f"no job {job_id!r} in Redis (finished jobs are kept {settings.result_ttl_s} s)"
        )
    chain = store.chain(job_id)
    recent, logged = _log_tail(rt, job_id, last)
    waiting = record.status is JobStatus.INPUT_REQUIRED
    interrupts = record.interrupts if waiting else []
    if as_json:
        report = {
            "record": record.model_dump(mode="json"),
            "interrupts": interrupts,
            "events": [event.model_dump(mode="json") for event in recent],
            "events_logged": logged,
            "chain": chain,
        }
        print(json.dumps(report, indent=2))
        return
    out = _out()
    table = Table(title=f"job {job_id}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for name in ("task_type", "status", "priority", "epoch", "attempts", "retries", "assignee"):
        table.add_row(name, str(getattr(record, name)))
    table.add_row("created", _when(record.created_ms))
    table.add_row("updated", _when(record.updated_ms))
    table.add_row("finished", _when(record.finished_ms))
    table.add_row("deadline", _when(record.deadline_ms))
    if record.input_timeout_s is not None:
        table.add_row("input timeout", f"{record.input_timeout_s:g} s")
    for line in _interrupt_lines(interrupts):
        table.add_row("[yellow]waits for[/]", escape(line))
    table.add_row("payload", json.dumps(record.payload)[:500])
    if record.requirements.tags or record.requirements.worker_ids:
        table.add_row("requirements", record.requirements.model_dump_json())
    if record.result is not None:
        table.add_row("result", json.dumps(record.result)[:500])
    if record.error:
        table.add_row(
            "error", f"[red]{record.error.get('type', '')}: {record.error.get('message', '')}[/]"
        )
    out.print(table)
    if waiting:
        out.print(
            f"answer it with: python -m project resume {job_id} 'VALUE'; "
            f"or: python -m project cancel {job_id}",
            markup=False,
            soft_wrap=True,
        )
    if recent:
        log = Table(title=f"last {len(recent)} of {logged} events (oldest first)")
        for column in ("cursor", "at", "kind", "event"):
            log.add_column(column)
        for event in recent:
            head, below = _event_text(event)
            log.add_row(event.id, _clock(event.ms), event.kind, escape("\n".join([head, *below])))
        out.print(log)
    links = Table(title="causal chain (oldest first)")
    for column in ("#", "type", "sender -> recipient", "seq", "signed at", "envelope", "parent"):
        links.add_column(column)
    for n, link in enumerate(chain, start=1):
        links.add_row(
            str(n),
            link.get("type", ""),
            f"{link.get('sender', '')} -> {link.get('recipient', '')}",
            str(link.get("sequence_number", "")),
            _when(link.get("timestamp_ms")),
            str(link.get("id", ""))[:12],
            str(link.get("parent_request_id") or "-")[:12],
        )
    out.print(links)


# --- job logs: follow, events, resume, cancel -----------------------------------------

EXIT_ALREADY_FINAL = 3
"""``cancel``'s exit code for a job that was final already (nothing changed)."""

_EVENT_INDENT = " " * 22
"""Where the continuation lines of a printed event (its interrupts) start."""


def _runtime(settings: Any) -> Any:
    """The job API's dependencies, on a client that fails fast (see :func:`_redis`)."""
    from project.core.runtime import Runtime

    runtime = Runtime(settings)
    runtime.redis = _redis(settings)
    return runtime


def _clock(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%H:%M:%S.%f")[:-3]


def _short(value: object, limit: int = 160) -> str:
    """``value`` as one line of JSON, cut at ``limit`` characters."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _interrupt_lines(interrupts: Iterable[Mapping[str, Any]]) -> list[str]:
    """One line per pending interrupt: its id (to answer it alone) and its value."""
    return [f"interrupt {i.get('id', '?')}: {_short(i.get('value'), 2000)}" for i in interrupts]


def _event_text(event: Any) -> tuple[str, list[str]]:
    """What one event of a job's log says, and the lines under it (a park's interrupts)."""
    data: Mapping[str, Any] = event.data
    if event.kind == "update":
        return "; ".join(f"{node}: {_update_text(update)}" for node, update in data.items()), []
    if event.kind != "status":
        return _short(data, 400), []
    status = str(data.get("status", "?"))
    details = [
        f"{key}={data[key]}" for key in ("epoch", "worker") if data.get(key) not in (None, "")
    ]
    if data.get("resumed"):
        details.append("resumed")
    error = data.get("error")
    if isinstance(error, dict):
        details.append(f"error={error.get('type', '')}: {error.get('message', '')}")
    elif status == "COMPLETED" and "result" in data:
        details.append(f"result={_short(data['result'], 120)}")
    interrupts = data.get("interrupts")
    below = (
        _interrupt_lines(i for i in interrupts if isinstance(i, dict))
        if isinstance(interrupts, list)
        else []
    )
    return f"{status:<14} {' '.join(details)}".rstrip(), below


def _update_text(update: object, limit: int = 240) -> str:
    """A step's state update in a line; chat messages as ``type: content``."""
    if not isinstance(update, dict):
        return _short(update, limit)
    parts: list[str] = []
    for key, value in update.items():
        messages = value if isinstance(value, list) else []
        if key == "messages" and all(isinstance(m, dict) and "type" in m for m in messages):
            parts += [_message_text(m) for m in messages]
        else:
            parts.append(f"{key}={_short(value, limit)}")
    text = " | ".join(parts)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _message_text(message: Mapping[str, Any]) -> str:
    """A LangChain message (as JSON) in a few words: who, what, which tool calls."""
    kind, content = message.get("type", "?"), message.get("content", "")
    text = content if isinstance(content, str) else _short(content, 80)
    if kind == "tool":
        return f"tool {message.get('name', '')}: {text}"
    calls = [
        f"{c.get('name', '?')}({_short(c.get('args', {}), 80)})"
        for c in message.get("tool_calls") or []
        if isinstance(c, dict)
    ]
    if calls:
        return f"{kind} calls {', '.join(calls)}" + (f" and says {text}" if text else "")
    return f"{kind}: {text}"


def _event_lines(event: Any) -> list[str]:
    """How ``submit --follow``, ``resume --follow`` and ``events`` print one event."""
    head, below = _event_text(event)
    return [f"{_clock(event.ms)}  {event.kind:<6}  {head}", *(_EVENT_INDENT + b for b in below)]


def _print_events(
    rt: Any, job_id: str, after: str | None, *, idle_s: float | None, until_input: bool
) -> tuple[Any, str | None]:
    """Print the job's events after ``after`` as they come, until it is final (or waits
    for input, with ``until_input``), or ``idle_s`` passes without one.

    Returns the last event printed (None if none) and the cursor after it.
    """
    from project.core import control

    out = _out()
    last, cursor = None, after
    for event in control.events(rt, job_id, after, block_s=idle_s):
        for line in _event_lines(event):
            out.print(line, markup=False, soft_wrap=True)
        sys.stdout.flush()
        last, cursor = event, event.id
        if until_input and event.kind == "status" and event.data.get("status") == "INPUT_REQUIRED":
            break
    return last, cursor


def _follow_to_answer(rt: Any, job_id: str, after: str | None, *, idle_s: float) -> None:
    """Follow a job until it completes (print its result), waits for input (say how to
    answer it) or fails (one error line, exit 1)."""
    from project.core.models import JobStatus

    last, cursor = _print_events(rt, job_id, after, idle_s=idle_s, until_input=True)
    status = last.data.get("status") if last is not None and last.kind == "status" else None
    out = _out()
    if status == JobStatus.INPUT_REQUIRED:
        out.print(
            f"job {job_id} waits for input. Answer every interrupt with\n"
            f"  python -m project resume {job_id} 'VALUE'\n"
            f"(VALUE is JSON or plain text; '{{\"<interrupt id>\": VALUE, ...}}' answers each "
            f"its own), or cancel it with\n"
            f"  python -m project cancel {job_id}",
            markup=False,
            soft_wrap=True,
        )
        return
    if status == JobStatus.COMPLETED:
        out.print(JSON.from_data(last.data.get("result")))
        return
    if status is not None and JobStatus(status).is_final:
        error = last.data.get("error") or {}
        raise _fail(f"{error.get('type', status)}: {error.get('message', '')}".rstrip(": "))
    record = rt.jobs.get(job_id)
    if record is None:
        raise _fail(f"no job {job_id!r} (never submitted, or expired)")
    raise _fail(
        f"no event for {idle_s:g} s; job {job_id} is {record.status.value}. Follow on with: "
        f"python -m project events {job_id}{f' --after {cursor}' if cursor else ''} --follow"
    )


def _log_tail(rt: Any, job_id: str, count: int) -> tuple[list[Any], int]:
    """The last ``count`` events of a job's log, and how many it holds."""
    from project.core.constants import KEY_JOB_LOG

    key = KEY_JOB_LOG + job_id
    pipe = rt.redis.pipeline(transaction=False)
    pipe.xlen(key)
    pipe.xrevrange(key, "+", "-", count=count + 1)
    total, newest = pipe.execute()
    after = newest[-1][0] if len(newest) > count else None
    return rt.joblog.read(job_id, after, count=count), int(total)


def _last_cursor(rt: Any, job_id: str) -> str | None:
    from project.core.constants import KEY_JOB_LOG

    newest = rt.redis.xrevrange(KEY_JOB_LOG + job_id, "+", "-", count=1)
    return str(newest[0][0]) if newest else None


@app.command()
@friendly_errors
def events(
    job_id: Annotated[str, typer.Argument(help="The job id.")],
    after: Annotated[
        str | None, typer.Option(help="Only the events after this cursor (an event's id).")
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", help="Wait for new events until the job is final.")
    ] = False,
    timeout: Annotated[
        float | None, typer.Option(help="With --follow: stop after S seconds without an event.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per event.")] = False,
) -> None:
    """A job's event log: status changes, agents' step updates and custom events.

    The last line gives the cursor to pass as --after to read on from there.
    """
    from project.core import control

    rt = _runtime(_settings())
    out = _out()
    seen, cursor = 0, after
    if follow:
        stream: Iterable[Any] = control.events(rt, job_id, after, block_s=timeout)
    else:
        stream = _read_all(rt, job_id, after)
    try:
        for event in stream:
            if as_json:
                print(event.model_dump_json(), flush=True)
            else:
                for line in _event_lines(event):
                    out.print(line, markup=False, soft_wrap=True)
                sys.stdout.flush()
            seen, cursor = seen + 1, event.id
    except KeyboardInterrupt:
        pass
    if not seen and rt.jobs.get(job_id) is None:
        raise _fail(f"no job {job_id!r} (never submitted, or expired)")
    if not as_json:
        out.print(f"{seen} events; last cursor {cursor or '-'}", markup=False)


def _read_all(rt: Any, job_id: str, after: str | None, batch_size: int = 200) -> Iterator[Any]:
    """The events of a job's log after ``after`` that are there now, in batches."""
    cursor = after
    while True:
        batch = rt.joblog.read(job_id, cursor, count=batch_size)
        yield from batch
        if len(batch) < batch_size:
            return
        cursor = batch[-1].id


def _parse_value(text: str) -> Any:
    """A resume value: JSON if it parses, else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


@app.command()
@friendly_errors
def resume(
    job_id: Annotated[str, typer.Argument(help="The id of a job that waits for input.")],
    value: Annotated[
        str,
        typer.Argument(
            help="The answer: JSON ('{\"approved\": true}', true, 42), else taken as text. "
            "'{\"<interrupt id>\": answer, ...}' answers each interrupt its own."
        ),
    ],
    follow: Annotated[
        bool, typer.Option("--follow", help="Then print its events, as submit --follow does.")
    ] = False,
    timeout: Annotated[
        float, typer.Option(help="With --follow: stop after S seconds without an event.")
    ] = 60.0,
) -> None:
    """Answer an agent that waits for input; any eligible worker continues it."""
    from project.core import control

    rt = _runtime(_settings())
    answer = _parse_value(value)
    cursor = _last_cursor(rt, job_id) if follow else None
    view = control.resume(rt, job_id, answer)
    _out().print(
        f"resumed job {job_id} with {_short(answer)}: it is {view.status.value} "
        f"(epoch {view.epoch}) until a worker continues it",
        markup=False,
        soft_wrap=True,
    )
    if follow:
        _follow_to_answer(rt, job_id, cursor, idle_s=timeout)


@app.command()
@friendly_errors
def cancel(job_id: Annotated[str, typer.Argument(help="The job id.")]) -> None:
    """End a job as canceled wherever it is (queued, running, waiting for input).

    Exit code 0: canceled. 3: the job was final already, and nothing changed.
    1: no such job, or Redis is unreachable.
    """
    from project.core import control

    outcome = control.cancel(_runtime(_settings()), job_id)
    if outcome.canceled:
        _out().print(outcome.message, markup=False, soft_wrap=True)
        return
    _out().print(f"[yellow]{escape(outcome.message)}[/]", soft_wrap=True)
    raise typer.Exit(EXIT_ALREADY_FINAL)


# --- metrics --------------------------------------------------------------------------


@app.command()
@friendly_errors
def metrics(
    port: Annotated[int, typer.Option(help="Port to serve /metrics on.")] = 9100,
    addr: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    multiproc_dir: Annotated[
        list[Path] | None,
        typer.Option(
            help="PROMETHEUS_MULTIPROC_DIR of a service to include (repeatable; default: "
            "the variable's value, if set)."
        ),
    ] = None,
    once: Annotated[bool, typer.Option("--once", help="Print the figures once and exit.")] = False,
) -> None:
    """Serve the Prometheus figures: cluster state from Redis plus process metric files."""
    from prometheus_client import generate_latest

    from project.core.metrics import metrics_registry, serve_metrics

    settings = _settings()
    redis = _redis(settings)
    redis.ping()
    dirs = [str(d) for d in multiproc_dir or []]
    if once:
        registry = metrics_registry(redis=redis, multiproc_dirs=dirs or None)
        sys.stdout.write(generate_latest(registry).decode())
        return
    server, _ = serve_metrics(port, addr=addr, redis=redis, multiproc_dirs=dirs or None)
    _out().print(f"serving http://{addr}:{port}/metrics (Ctrl-C stops)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()


# --- gateway (A2A 1.0 server; project/gateway) ---------------------------------------


@app.command()
@friendly_errors
def gateway(
    host: Annotated[
        str | None, typer.Option(help="Address to listen on (default AGENTS_GATEWAY_HOST).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port to listen on (default AGENTS_GATEWAY_PORT).")
    ] = None,
) -> None:
    """Serve the A2A 1.0 gateway: any A2A client can send and follow jobs (needs [gateway])."""
    try:
        from project.gateway import serve
    except ImportError as exc:
        raise _fail(
            f"the gateway needs the gateway extra: pip install 'agents-celery[gateway]' ({exc})"
        ) from None

    settings = _settings()
    overrides = {"gateway_host": host, "gateway_port": port}
    settings = settings.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    serve(settings)


def main() -> None:
    """Console-script entry point."""
    app()
