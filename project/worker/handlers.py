"""Task types and the registry through which an app adds its own.

A handler is a plain function from a validated pydantic payload to a JSON
result. Add one in a module of your own and list that module in
``AGENTS_HANDLER_MODULES`` so workers import it::

    from pydantic import BaseModel
    from project.worker import handler

    class Shout(BaseModel):
        text: str

    @handler("shout", payload=Shout, description="Upper-cases text")
    def shout(job: Shout) -> dict[str, str]:
        return {"result": job.text.upper()}

Handlers must be idempotent: delivery is at-least-once, so a job whose worker
died mid-run runs again elsewhere. Exactly one result is recorded per job, but
side effects outside the result happen once per run.
"""

from __future__ import annotations

import math
import operator
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, JsonValue

HandlerFn = Callable[..., Any]


@dataclass(frozen=True)
class RetryPolicy:
    """Retry a run that raised one of ``on``: up to ``max_retries`` times, after an
    exponential backoff (``backoff_s * 2**n``, at most ``max_backoff_s``), with full
    jitter unless ``jitter=False``. A retry is not a new run: it is counted in the job's
    ``retries`` and never makes the job a poison job. An agent retries from its last
    checkpoint, so only the step that failed runs again."""

    on: tuple[type[BaseException], ...] = (Exception,)
    max_retries: int = 3
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    jitter: bool = True

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError("retry counts and backoffs are not negative")

    def delay_s(self, retry: int, draw: Callable[[], float] = random.random) -> float:
        """Seconds to wait before retry number ``retry`` (0 for the first)."""
        ceiling = float(min(self.max_backoff_s, self.backoff_s * 2**retry))
        return ceiling * draw() if self.jitter else ceiling


@dataclass(frozen=True)
class Handler:
    """A registered task type: a plain handler, or an agent (``kind == "agent"``, whose
    ``fn`` returns the LangGraph StateGraph builder)."""

    task_type: str
    fn: HandlerFn
    payload_model: type[BaseModel]
    description: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)
    kind: Literal["handler", "agent"] = "handler"
    retry: RetryPolicy | None = None
    time_limit_s: float | None = None
    output: str | None = None
    """Agents: the state key whose value is the job's result (default: the whole state)."""
    types: tuple[type, ...] = ()
    """Agents: classes beyond LangGraph's allowlist that checkpoints may hold."""


HANDLERS: dict[str, Handler] = {}


def register(entry: Handler) -> None:
    """Add a task type to the registry.

    Raises:
        ValueError: the task type is taken by another function, or a limit is not positive.
    """
    known = HANDLERS.get(entry.task_type)
    if known is not None and known.fn is not entry.fn:
        raise ValueError(f"task type {entry.task_type!r} already has a handler")
    if entry.time_limit_s is not None and entry.time_limit_s <= 0:
        raise ValueError("time_limit_s is a positive number of seconds")
    HANDLERS[entry.task_type] = entry


def handler(
    task_type: str,
    *,
    payload: type[BaseModel],
    description: str = "",
    tags: tuple[str, ...] = (),
    retry: RetryPolicy | None = None,
    time_limit_s: float | None = None,
) -> Callable[[HandlerFn], HandlerFn]:
    """Register ``fn`` as the handler of ``task_type``; its payload is validated by ``payload``.

    ``retry`` retries transient failures; a run longer than ``time_limit_s`` fails with
    JobTimeLimitError (Celery's soft time limit, then its hard limit a little later).
    """

    def add(fn: HandlerFn) -> HandlerFn:
        register(
            Handler(
                task_type,
                fn,
                payload,
                description or (fn.__doc__ or ""),
                tags,
                retry=retry,
                time_limit_s=time_limit_s,
            )
        )
        return fn

    return add


# --- compute -----------------------------------------------------------------

Number = int | float


class ComputePayload(BaseModel):
    """Arithmetic over a list of numbers."""

    model_config = ConfigDict(extra="forbid")

    operation: Literal["sum", "product", "mean", "median", "min", "max", "stdev", "count"]
    values: list[Number] = Field(max_length=1_000_000)


_COMPUTE: dict[str, Callable[[list[Number]], Number]] = {
    "sum": lambda v: sum(v),
    "product": lambda v: math.prod(v),
    "mean": statistics.fmean,
    "median": statistics.median,
    "min": min,
    "max": max,
    "stdev": statistics.pstdev,
    "count": len,
}


@handler("compute", payload=ComputePayload, tags=("math",))
def compute(job: ComputePayload) -> dict[str, JsonValue]:
    """sum, product, mean, median, min, max, stdev or count of ``values``."""
    if not job.values and job.operation not in ("sum", "product", "count"):
        raise ValueError(f"{job.operation} of no values is undefined")
    return {"operation": job.operation, "result": _COMPUTE[job.operation](job.values)}


# --- data_processing ---------------------------------------------------------

_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "gt": operator.gt,
    "ge": operator.ge,
    "lt": operator.lt,
    "le": operator.le,
    "in": lambda a, b: a in b,
}
_MAP: dict[str, Callable[[Any], Any]] = {
    "upper": lambda v: str(v).upper(),
    "lower": lambda v: str(v).lower(),
    "abs": abs,
    "neg": operator.neg,
    "square": lambda v: v * v,
    "round": round,
    "str": str,
    "len": len,
}
_AGGREGATE: dict[str, Callable[[list[Any]], Any]] = {
    "sum": sum,
    "count": len,
    "min": min,
    "max": max,
    "mean": statistics.fmean,
}


class FilterStep(BaseModel):
    """Keep records whose ``field`` compares true against ``value``."""

    op: Literal["filter"]
    field: str
    cmp: Literal["eq", "ne", "gt", "ge", "lt", "le", "in"] = "eq"
    value: JsonValue = None


class MapStep(BaseModel):
    """Apply ``func`` to ``field`` and store it in ``into`` (default: the same field)."""

    op: Literal["map"]
    field: str
    func: Literal["upper", "lower", "abs", "neg", "square", "round", "str", "len"]
    into: str | None = None


class SortStep(BaseModel):
    """Sort records by ``field``."""

    op: Literal["sort"]
    field: str
    reverse: bool = False


class AggregateStep(BaseModel):
    """Group by ``group_by`` (or all records) and reduce ``field`` with ``func``."""

    op: Literal["aggregate"]
    func: Literal["sum", "count", "min", "max", "mean"]
    field: str | None = None
    group_by: str | None = None


# Discriminated by ``op``, so a bad step's error names that step's own fields.
Step = Annotated[FilterStep | MapStep | SortStep | AggregateStep, Field(discriminator="op")]


class DataProcessingPayload(BaseModel):
    """A pipeline of steps over a list of records."""

    model_config = ConfigDict(extra="forbid")

    records: list[dict[str, JsonValue]] = Field(max_length=100_000)
    steps: list[Step] = Field(default_factory=list, max_length=32)


def _aggregate(records: list[dict[str, Any]], step: AggregateStep) -> Any:
    def reduce(group: list[dict[str, Any]]) -> Any:
        if step.func == "count":
            return len(group)
        if step.field is None:
            raise ValueError(f"aggregate {step.func} needs a field")
        return _AGGREGATE[step.func]([r[step.field] for r in group])

    if step.group_by is None:
        return reduce(records)
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(str(record.get(step.group_by)), []).append(record)
    return {key: reduce(group) for key, group in sorted(groups.items())}


@handler("data_processing", payload=DataProcessingPayload, tags=("data",))
def data_processing(job: DataProcessingPayload) -> dict[str, JsonValue]:
    """filter, map, sort and aggregate over a list of records, in order."""
    records: list[dict[str, Any]] = [dict(r) for r in job.records]
    for step in job.steps:
        if isinstance(step, FilterStep):
            test = _COMPARE[step.cmp]
            records = [r for r in records if step.field in r and test(r[step.field], step.value)]
        elif isinstance(step, MapStep):
            fn = _MAP[step.func]
            records = [{**r, (step.into or step.field): fn(r[step.field])} for r in records]
        elif isinstance(step, SortStep):
            records = sorted(records, key=lambda r: r[step.field], reverse=step.reverse)
        else:
            return {"result": _aggregate(records, step), "count": len(records)}
    return {"result": cast("list[JsonValue]", records), "count": len(records)}


# --- generic -----------------------------------------------------------------


class GenericPayload(BaseModel):
    """Echo ``echo`` back after an optional pause."""

    model_config = ConfigDict(extra="allow")

    echo: JsonValue = None
    sleep_s: float = Field(default=0.0, ge=0.0, le=3600.0)


@handler("generic", payload=GenericPayload)
def generic(job: GenericPayload) -> dict[str, JsonValue]:
    """Return the payload's ``echo``, after sleeping ``sleep_s`` seconds."""
    if job.sleep_s:
        time.sleep(job.sleep_s)
    return {"result": job.echo}
