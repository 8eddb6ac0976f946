"""The structured log formatter and the filter that adds who logged and about which job."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from project.core import logs
from project.core.logs import AgentContextFilter, JsonFormatter, configure_handlers
from project.core.runtime import AgentIdentity, Runtime, get_runtime

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def identity(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Pretend this process is worker w7."""
    runtime = Runtime(get_runtime().settings, AgentIdentity(frozenset({"worker"}), "w7", "w7"))
    monkeypatch.setattr("project.core.runtime._runtime", runtime)
    yield


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO, logging.Handler]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("project.test_logs")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield logger, stream, handler
    logger.removeHandler(handler)


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_job_line_carries_job_request_tier_and_agent(
    identity: None, captured: tuple[logging.Logger, io.StringIO, logging.Handler]
) -> None:
    logger, stream, _handler = captured
    configure_handlers(logger, json_lines=True)
    logger.info("dropped stale work order", extra={"job_id": "j-1", "epoch": 3})
    (line,) = _lines(stream)
    assert line["message"] == "dropped stale work order"
    assert line["level"] == "INFO"
    assert line["logger"] == "project.test_logs"
    assert line["job_id"] == "j-1"
    assert line["request_id"] == "j-1"  # the A2A chain of a job is rooted at its id
    assert line["tier"] == "worker"
    assert line["agent_id"] == "w7"
    assert line["epoch"] == 3
    assert str(line["ts"]).endswith("+00:00")


def test_explicit_context_wins_and_odd_values_are_stringified(
    identity: None, captured: tuple[logging.Logger, io.StringIO, logging.Handler]
) -> None:
    logger, stream, _ = captured
    configure_handlers(logger, json_lines=True)
    logger.warning(
        "agent marked dead",
        extra={
            "agent_id": "w2",
            "tier": "coordinator",
            "request_id": "r-9",
            "job_id": "j-2",
            "when": object.__new__(object),
            "ids": ("a", "b"),
        },
    )
    (line,) = _lines(stream)
    assert (line["agent_id"], line["tier"], line["request_id"]) == ("w2", "coordinator", "r-9")
    assert str(line["when"]).startswith("<object object")
    assert line["ids"] == ["a", "b"]


def test_exceptions_are_one_json_line(
    identity: None, captured: tuple[logging.Logger, io.StringIO, logging.Handler]
) -> None:
    logger, stream, _ = captured
    configure_handlers(logger, json_lines=True)
    try:
        raise ZeroDivisionError("boom")
    except ZeroDivisionError:
        logger.exception("handler raised", extra={"job_id": "j-3"})
    (line,) = _lines(stream)
    assert "ZeroDivisionError: boom" in str(line["exc_info"])
    assert line["job_id"] == "j-3"


def test_text_mode_appends_context_to_job_lines_only(
    identity: None, captured: tuple[logging.Logger, io.StringIO, logging.Handler]
) -> None:
    logger, stream, handler = captured
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    configure_handlers(logger, json_lines=False)
    configure_handlers(logger, json_lines=False)  # idempotent
    logger.info("agent registered")
    logger.info("job done", extra={"job_id": "j-4"})
    first, second = stream.getvalue().splitlines()
    assert first == "INFO agent registered"
    assert second == "INFO job done [job_id=j-4 request_id=j-4 tier=worker agent_id=w7]"
    assert sum(isinstance(f, AgentContextFilter) for f in handler.filters) == 1


def test_formatter_without_filter_still_valid_json() -> None:
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "plain %s", ("text",), None)
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "plain text" and "job_id" not in line


def test_celery_logger_setup_installs_the_formatter(
    identity: None,
    monkeypatch: pytest.MonkeyPatch,
    captured: tuple[logging.Logger, io.StringIO, logging.Handler],
) -> None:
    from celery.signals import after_setup_logger

    monkeypatch.setenv("AGENTS_LOG_JSON", "true")
    from project.core.settings import get_settings

    get_settings.cache_clear()
    try:
        logger, _stream, handler = captured
        after_setup_logger.send(
            sender=None,
            logger=logger,
            loglevel=logging.INFO,
            logfile=None,
            format="",
            colorize=False,
        )
        assert isinstance(handler.formatter, JsonFormatter)
        assert logs.CONTEXT_FIELDS == ("job_id", "request_id", "tier", "agent_id")
    finally:
        monkeypatch.delenv("AGENTS_LOG_JSON")
        get_settings.cache_clear()


def test_job_id_of_task_messages() -> None:
    envelope = {"causal": {"request_id": "job-7"}, "payload": {}}
    assert logs.job_id_of("project.coordinator.submit", "task-1", ["compute", {}]) == "task-1"
    assert logs.job_id_of("project.worker.execute", "task-2", [envelope]) == "job-7"
    assert logs.job_id_of("project.worker.execute", "task-2", ["not an envelope"]) is None
    assert logs.job_id_of("project.coordinator.health_check", "task-3", []) is None
    long = {"causal": {"request_id": "x" * 500}}
    assert logs.job_id_of("project.distributor.assign", None, [long]) == "x" * 128


def test_lines_inside_a_task_carry_its_job(
    identity: None, captured: tuple[logging.Logger, io.StringIO, logging.Handler]
) -> None:
    from celery.signals import task_postrun, task_prerun

    logger, stream, _ = captured
    configure_handlers(logger, json_lines=True)
    task = type("Task", (), {"name": "project.distributor.complete"})()
    envelope = {"causal": {"request_id": "job-9"}}
    task_prerun.send(sender=task, task_id="t-1", task=task, args=[envelope], kwargs={})
    logger.info("inside the task")
    task_postrun.send(sender=task, task_id="t-1", task=task, args=[envelope], kwargs={})
    logger.info("after the task")
    inside, after = _lines(stream)
    assert (inside["job_id"], inside["request_id"]) == ("job-9", "job-9")
    assert "job_id" not in after and "request_id" not in after
