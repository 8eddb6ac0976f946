"""Structured logs: who logged (tier, agent id) and about which job (job id, request id).

Every handler of a Celery process gets :class:`AgentContextFilter`, which adds the
process's ``tier`` and ``agent_id`` (from the runtime's identity) to each record,
and a ``request_id`` to any record about a job (the A2A chain's root id is the
job id). With ``AGENTS_LOG_JSON=true`` the handlers print one JSON object per line
(:class:`JsonFormatter`); otherwise the context is appended to the usual text line.

Code says which job a line is about with ``extra``::

    log.info("dropped stale work order", extra={"job_id": job_id, "epoch": epoch})

Inside a task the job is known without ``extra``: ``task_prerun`` notes the job id
of the message being handled (the submit task's own id, or the ``request_id`` of the
envelope it carries) and every line logged until ``task_postrun``, Celery's own
"Task ... succeeded" line included, gets it.

Hooked in through Celery's ``after_setup_logger`` and ``after_setup_task_logger``
signals (this module is imported by :mod:`project.core.celery_app`).
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from celery.signals import after_setup_logger, after_setup_task_logger, task_postrun, task_prerun

from project.core.constants import TASK_SUBMIT

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None)).keys()
) | {"message", "asctime", "color_message"}

CONTEXT_FIELDS = ("job_id", "request_id", "tier", "agent_id")
"""Fields the filter guarantees on every record about a job (in this order in text logs)."""


def _json_safe(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple | set | frozenset):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    return str(value)


class AgentContextFilter(logging.Filter):
    """Adds ``tier`` and ``agent_id`` to every record, and ``request_id`` to job records.

    Values a caller passed in ``extra`` win. Never drops a record.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "tier") or not hasattr(record, "agent_id"):
            tier, agent_id = _identity()
            if not hasattr(record, "tier"):
                record.tier = tier
            if not hasattr(record, "agent_id"):
                record.agent_id = agent_id
        job_id = getattr(record, "job_id", None)
        if job_id is None:
            job_id = _current_job.get()
            if job_id is not None:
                record.job_id = job_id
        if job_id and not getattr(record, "request_id", None):
            record.request_id = job_id  # the A2A chain of a job is rooted at its id
        return True


_current_job: ContextVar[str | None] = ContextVar("agents_current_job", default=None)
_MAX_ID_CHARS = 128


def job_id_of(task_name: str, task_id: str | None, args: Any) -> str | None:
    """The job a task message is about: the submit task's id, or its envelope's request id.

    Only for logging: the envelope is not verified yet when this runs.
    """
    if task_name == TASK_SUBMIT:
        return task_id
    if args and isinstance(args[0], dict):
        causal = args[0].get("causal")
        request_id = causal.get("request_id") if isinstance(causal, dict) else None
        if isinstance(request_id, str) and request_id:
            return request_id[:_MAX_ID_CHARS]
    return None


def _enter_task(task_id: str | None = None, task: Any = None, args: Any = None, **_: Any) -> None:
    _current_job.set(job_id_of(str(getattr(task, "name", "")), task_id, args))


def _leave_task(**_: Any) -> None:
    _current_job.set(None)


def _identity() -> tuple[str, str]:
    # Imported late: the runtime imports most of core, which logs.
    from project.core.runtime import get_runtime

    try:
        identity = get_runtime().identity
    except Exception:  # logging must work even when settings are broken
        return "client", "?"
    return ",".join(sorted(identity.tiers)) or "client", identity.agent_id


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the context, any extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = _json_safe(value)
        for name, value in vars(record).items():
            if name not in _STANDARD_ATTRS and name not in entry and not name.startswith("_"):
                entry[name] = _json_safe(value)
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, separators=(",", ":"), ensure_ascii=False)


class ContextTextFormatter(logging.Formatter):
    """Wraps a text formatter and appends ``key=value`` for the context of job records."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self._inner = inner or logging.Formatter(logging.BASIC_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        text = self._inner.format(record)
        if getattr(record, "job_id", None) is None:
            return text
        pairs = " ".join(
            f"{name}={getattr(record, name)}"
            for name in CONTEXT_FIELDS
            if getattr(record, name, None) is not None
        )
        return f"{text} [{pairs}]"


def configure_handlers(
    logger: logging.Logger, *, json_lines: bool, level: str | None = None
) -> None:
    """Give every handler of ``logger`` the context filter and the chosen formatter.

    Idempotent: calling it again does not stack filters or formatters.
    """
    for handler in logger.handlers:
        if not any(isinstance(f, AgentContextFilter) for f in handler.filters):
            handler.addFilter(AgentContextFilter())
        current = handler.formatter
        if json_lines:
            if not isinstance(current, JsonFormatter):
                handler.setFormatter(JsonFormatter())
        elif not isinstance(current, ContextTextFormatter):
            handler.setFormatter(ContextTextFormatter(current))
    if level:
        logging.getLogger("project").setLevel(level.upper())


def _on_logger_setup(logger: logging.Logger, **_: Any) -> None:
    from project.core.settings import get_settings

    settings = get_settings()
    configure_handlers(logger, json_lines=settings.log_json, level=settings.log_level)


after_setup_logger.connect(_on_logger_setup, weak=False)
after_setup_task_logger.connect(_on_logger_setup, weak=False)
task_prerun.connect(_enter_task, weak=False)
task_postrun.connect(_leave_task, weak=False)
