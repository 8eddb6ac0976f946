"""The benchmark's pure parts: percentiles, the baseline's settings, MONITOR tallies, profiles."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

from project.core.settings import Settings
from tools.bench.bench import (
    REPO_ROOT,
    ServerStats,
    baseline_config_json,
    command_label,
    parse_args,
    percentile,
    reads_between,
    script_names,
    tally,
    tier_of,
)
from tools.bench.gateway import _command_rates
from tools.bench.profile import categorize, summarize

CHILD = 'process 1:"celery main";process 2:"celery child";'
MAIN = 'process 1:"celery main";'
TRACE = "trace_task (celery/app/trace.py:1);"
EXECUTE = TRACE + (
    "execute (project/worker/tasks.py:1);execute_work_order (project/worker/execution.py:40);"
)
ASSIGN = (
    TRACE
    + "assign (project/distributor/tasks.py:1);assign_job (project/distributor/dispatch.py:70);"
)


def load_baseline_app(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    settings = Settings(redis_url="redis://127.0.0.1:1/0")
    monkeypatch.setenv("BENCH_BASELINE_CONFIG", baseline_config_json(settings))
    spec = importlib.util.spec_from_file_location(
        "baseline_app", REPO_ROOT / "tools" / "bench" / "baseline_app.py"
    )
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
    ours = {
        "bench.baseline.submit",
        "bench.baseline.assign",
        "bench.baseline.execute",
        "bench.baseline.complete",
    }
    assert {name for name in module.app.tasks if name.startswith("bench.")} == ours


def test_baseline_config_is_json_without_our_queues() -> None:
    config = json.loads(baseline_config_json(Settings(redis_url="redis://127.0.0.1:1/0")))
    assert "task_queues" not in config and "task_routes" not in config
    assert config["task_serializer"] == "json"


@pytest.mark.parametrize(
    ("stack", "category"),
    [
        (
            CHILD + EXECUTE + "Signer.reply (project/core/a2a/envelope.py:1);"
            "Signer.sign (project/core/a2a/envelope.py:1)",
            "hop: sign envelope",
        ),
        (
            CHILD + EXECUTE + "JobStore.start (project/core/state/jobs.py:1);"
            "Script.__call__ (redis/commands/core.py:1)",
            "hop: job record Lua (Redis)",
        ),
        (
            CHILD + EXECUTE + "Runtime.receive (project/core/runtime.py:1);"
            "verify (project/core/a2a/envelope.py:1)",
            "hop: verify envelope",
        ),
        (
            CHILD + ASSIGN + "pick_worker (project/distributor/dispatch.py:1);"
            "Redis.incr (redis/commands/core.py:1)",
            "hop: other Redis calls (redis-py)",
        ),
        (CHILD + ASSIGN + "pick_worker (project/distributor/dispatch.py:99)", "hop: our code"),
        (CHILD + ASSIGN + "dumps (json/__init__.py:1)", "hop: other (stdlib, libraries)"),
        (
            CHILD + EXECUTE + "run_handler (project/worker/execution.py:1);"
            "call_handler (project/worker/execution.py:1)",
            "hop: handler",
        ),
        (
            CHILD + TRACE + "execute (project/worker/tasks.py:1);"
            "timed_hop (project/core/hops.py:1);observe_hop (project/core/metrics.py:1);"
            "Histogram.observe (prometheus_client/metrics.py:1)",
            "hop: metrics",
        ),
        (
            CHILD + "TraceInfo.handle_ignore (celery/app/trace.py:1)",
            "task: Ignore() traceback + pickling",
        ),
        (
            CHILD + "worker (billiard/pool.py:1);" + TRACE + "on_success (celery/app/trace.py:1)",
            "task: Celery trace + IPC",
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
        f"{CHILD}{EXECUTE}verify (project/core/a2a/envelope.py:1) 3\n"
        f"{MAIN}EventDispatcher.send (celery/events/dispatcher.py:1) 1\n"
    )
    shares = summarize([path])
    assert shares["w1"]["samples"] == 4
    assert shares["all"]["hop: verify envelope"] == 75.0
    assert shares["all"]["main: task events (publish)"] == 25.0


def test_command_labels_name_scripts_and_subcommands() -> None:
    scripts = script_names()
    finish = next(sha for sha, name in scripts.items() if name == "job_finish")
    assert command_label(f"EVALSHA {finish} 4 job:1 jobs:open", scripts) == "EVALSHA job_finish"
    assert command_label("EVALSHA 0123456789abcdef 0", scripts) == "EVALSHA script 01234567"
    assert command_label("CLIENT SETNAME x", scripts) == "CLIENT SETNAME"
    assert command_label("hset job:1 status DONE", scripts) == "HSET"


def test_tiers_are_the_same_for_ours_and_the_baseline() -> None:
    assert [tier_of(s) for s in ("coordinator", "b-coordinator")] == ["coordinator"] * 2
    assert [tier_of(s) for s in ("distributor1", "b-distributor2")] == ["distributor"] * 2
    assert [tier_of(s) for s in ("w1", "b-w2")] == ["worker"] * 2


def test_tally_credits_a_scripts_commands_to_its_sender() -> None:
    scripts = script_names()
    finish = next(sha for sha, name in scripts.items() if name == "job_finish")

    def line(command: str, port: str = "", kind: str = "tcp") -> dict[str, str]:
        return {"command": command, "client_port": port, "client_type": kind}

    lines = [
        line("LPUSH distributor x" * 400, "5001"),  # over 6,000 bytes
        line(f"EVALSHA {finish} 4 job:1", "5002"),
        line("hset job:1 status COMPLETED", kind="lua"),
        line("publish events:jobs {}", kind="lua"),
        line("INFO all", "5003"),  # the benchmark's own
        line("GET x", "5999"),
    ]
    sources = {5001: "coordinator:child", 5002: "distributor1:child", 5003: "client"}
    found = tally(lines, sources, scripts)
    assert found.calls == {
        ("LPUSH", "coordinator:child", "coordinator:child"): 1,
        ("EVALSHA job_finish", "distributor:child", "distributor1:child"): 1,
        ("HSET (Lua: job_finish)", "distributor:child", "lua"): 1,
        ("PUBLISH (Lua: job_finish)", "distributor:child", "lua"): 1,
        ("GET", "other", "other"): 1,
    }
    assert found.large == {"LPUSH": 1}


def test_reads_between_leaves_out_the_later_info_call() -> None:
    before, after = ServerStats({}, {}, reads=100), ServerStats({}, {}, reads=151)
    assert reads_between(before, after) == 50


def test_cli_defaults() -> None:
    args = parse_args([])
    assert (args.jobs, args.latency_jobs, args.full, args.breakdown) == (2_000, 200, False, False)
    assert parse_args(["--full", "--experiment", "argsrepr"]).experiment == "argsrepr"
    assert parse_args(["--breakdown"]).breakdown is True
    with pytest.raises(SystemExit):
        parse_args(["--baseline-event"])


def test_gateway_command_rates_per_second() -> None:
    before = {"cmdstat_xread": {"calls": 10}, "cmdstat_hmget": {"calls": 100}}
    after = {
        "cmdstat_xread": {"calls": 20},
        "cmdstat_hmget": {"calls": 600},
        "cmdstat_info": {"calls": 5},
    }
    rates = _command_rates(before, after, 5.0)
    assert rates == {"xread": 2.0, "xrange": 0.0, "hmget": 100.0, "total": 103.0}
