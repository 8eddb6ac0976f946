"""The benchmark's pure parts: percentiles, the baseline's settings, the profile summary."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

from project.core.settings import Settings
from project.ops.bench import SCRIPTS_DIR, baseline_config_json, parse_args, percentile
from project.ops.bench_profile import categorize, summarize

CHILD = 'process 1:"celery main";process 2:"celery child";'
MAIN = 'process 1:"celery main";'
HOP = "trace_task (celery/app/trace.py:1);run_hop (project/core/graph.py:67);"


def load_baseline_app(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    settings = Settings(redis_url="redis://127.0.0.1:1/0")
    monkeypatch.setenv("BENCH_BASELINE_CONFIG", baseline_config_json(settings))
    spec = importlib.util.spec_from_file_location("baseline_app", SCRIPTS_DIR / "baseline_app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 51.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([], 0.5) == 0.0


def test_baseline_runs_with_our_celery_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    module = load_baseline_app(monkeypatch)
    conf = module.app.conf
    assert conf.broker_url == "redis://127.0.0.1:1/0"
    assert conf.task_acks_late is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.accept_content == ["json"]
    assert conf.worker_send_task_events is True
    assert conf.beat_schedule == {}
    assert [q.name for q in conf.task_queues] == ["bq.coordinator", "bq.distributor"]
    assert set(module.app.tasks) >= {
        "bench.baseline.submit",
        "bench.baseline.assign",
        "bench.baseline.execute",
        "bench.baseline.complete",
        "bench.baseline.event",
    }


def test_baseline_config_is_json_without_our_queues() -> None:
    config = json.loads(baseline_config_json(Settings(redis_url="redis://127.0.0.1:1/0")))
    assert "task_queues" not in config and "task_routes" not in config
    assert config["task_serializer"] == "json"


@pytest.mark.parametrize(
    ("stack", "category"),
    [
        (CHILD + HOP + "Pregel.invoke (langgraph/pregel/main.py:1)", "hop: LangGraph engine"),
        (
            CHILD + HOP + "Pregel.invoke (langgraph/pregel/main.py:1);"
            "_verify (project/worker/execution.py:1);ReplayGuard.claim (project/core/replay.py:1)",
            "hop: replay claim/finish (Redis)",
        ),
        (
            CHILD + HOP + "Pregel.invoke (langgraph/pregel/main.py:1);"
            "_act (project/worker/execution.py:1)",
            "hop: our node code",
        ),
        (
            CHILD + "TraceInfo.handle_ignore (celery/app/trace.py:1)",
            "task: Ignore() traceback + pickling",
        ),
        (
            MAIN + "EventDispatcher.send (celery/events/dispatcher.py:1)",
            "main: task events (publish)",
        ),
    ],
)
def test_profile_categories(stack: str, category: str) -> None:
    assert categorize(stack) == category


def test_profile_summary_shares(tmp_path: Path) -> None:
    path = tmp_path / "w1.collapsed"
    path.write_text(
        f"{CHILD}{HOP}Pregel.invoke (langgraph/pregel/main.py:1) 3\n"
        f"{MAIN}EventDispatcher.send (celery/events/dispatcher.py:1) 1\n"
    )
    shares = summarize([path])
    assert shares["w1"]["samples"] == 4
    assert shares["all"]["hop: LangGraph engine"] == 75.0
    assert shares["all"]["main: task events (publish)"] == 25.0


def test_cli_defaults() -> None:
    args = parse_args([])
    assert (args.jobs, args.latency_jobs, args.full) == (2_000, 200, False)
    assert parse_args(["--full", "--experiment", "direct"]).experiment == "direct"
    assert args.baseline_event is False
    assert parse_args(["--baseline-event"]).baseline_event is True
