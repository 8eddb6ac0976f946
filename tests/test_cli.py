"""The operators' CLI against the session's private Redis and live deployment."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from project import cli
from project.cli import app
from project.core.runtime import get_runtime
from project.ops.embedded_redis import free_port
from project.ops.local import LocalDeployment

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

WIDE = {"COLUMNS": "200"}


def invoke(*args: str, **env: str) -> Result:
    return CliRunner().invoke(app, list(args), env={**WIDE, **env})


def one_error_line(result: Result) -> str:
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def submit_and_wait(*args: str) -> tuple[Result, str]:
    result = invoke("submit", *args, "--wait", "--timeout", "30")
    (job_id,) = [line.split()[-1] for line in result.stdout.splitlines() if "submitted job" in line]
    return result, job_id


def test_status_shows_every_tier_live(deployment: LocalDeployment) -> None:
    result = invoke("status", "--json")
    assert result.exit_code == 0, result.output
    report: dict[str, Any] = json.loads(result.stdout)
    by_id = {a["id"]: a for a in report["agents"]}
    assert {"w1", "w2", "w3"} <= set(by_id)
    assert {a["tier"] for a in report["agents"]} >= {"coordinator", "distributor", "worker"}
    assert all(by_id[w]["health"] == "live" and not by_id[w]["dead"] for w in ("w1", "w2", "w3"))
    assert {"coordinator", "distributor", "worker.w1", "worker.w2", "worker.w3"} <= set(
        report["queues"]
    )
    table = invoke("status")
    assert table.exit_code == 0, table.output
    for text in ("agents", "queue depths", "worker.w1", "live", "COMPLETED", "PENDING"):
        assert text in table.stdout


def test_submit_wait_prints_the_result(deployment: LocalDeployment) -> None:
    result, _ = submit_and_wait("compute", '{"operation": "sum", "values": [20, 22]}')
    assert result.exit_code == 0, result.output
    assert '"result": 42' in result.stdout


def test_submit_with_priority_and_tags_reaches_a_worker(deployment: LocalDeployment) -> None:
    result, _ = submit_and_wait(
        "generic", '{"echo": "urgent one"}', "--priority", "urgent", "--deadline-s", "20"
    )
    assert result.exit_code == 0, result.output
    assert "urgent one" in result.stdout


def test_job_shows_record_and_causal_chain(deployment: LocalDeployment) -> None:
    submitted, job_id = submit_and_wait("compute", '{"operation": "max", "values": [3, 9]}')
    assert submitted.exit_code == 0, submitted.output
    deadline = time.monotonic() + 30  # the coordinator's EVENT lands just after the result
    while time.monotonic() < deadline and len(get_runtime().jobs.chain(job_id)) < 4:
        time.sleep(0.05)
    result = invoke("job", job_id)
    assert result.exit_code == 0, result.output
    for text in ("COMPLETED", "compute", "causal chain", "REQUEST", "RESPONSE", "EVENT"):
        assert text in result.stdout
    as_json = json.loads(invoke("job", job_id, "--json").stdout)
    assert as_json["record"]["status"] == "COMPLETED"
    assert as_json["record"]["result"]["result"] == 9
    types = [link["type"] for link in as_json["chain"]]
    assert types[0] == "REQUEST" and "RESPONSE" in types


def test_unknown_job_is_one_line(deployment: LocalDeployment) -> None:
    assert "no job 'nope'" in one_error_line(invoke("job", "nope"))


@pytest.mark.parametrize(
    ("payload", "says"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
    ],
)
def test_bad_payload_is_one_line(deployment: LocalDeployment, payload: str, says: str) -> None:
    assert says in one_error_line(invoke("submit", "compute", payload))


def test_bad_priority_is_one_line(deployment: LocalDeployment) -> None:
    line = one_error_line(invoke("submit", "compute", "{}", "--priority", "asap"))
    assert "--priority" in line


def test_a_failing_job_is_one_line(deployment: LocalDeployment) -> None:
    result, _ = submit_and_wait("compute", '{"operation": "cube-root", "values": [8]}')
    assert "InvalidPayloadError" in one_error_line(result)


def test_submit_file_with_progress(deployment: LocalDeployment, tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    lines = [
        json.dumps({"task_type": "compute", "payload": {"operation": "sum", "values": [i]}})
        for i in range(25)
    ]
    jobs.write_text("\n".join(["# a comment", *lines, ""]))
    result = invoke("submit", "--file", str(jobs), "--wait", "--timeout", "60")
    assert result.exit_code == 0, result.output
    assert "submitted 25 jobs" in result.stdout
    assert "completing" in result.stdout and "25/25" in result.stdout
    assert "completed" in result.stdout


def test_submit_file_with_a_bad_line(deployment: LocalDeployment, tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"task_type": "compute", "payload": {}}\n{"task_type": 3}\n')
    assert f"{jobs}:2" in one_error_line(invoke("submit", "--file", str(jobs)))


def test_watch_prints_job_state_changes(deployment: LocalDeployment) -> None:
    from project import submit_task

    def later() -> None:
        time.sleep(1.0)
        submit_task.delay("compute", {"operation": "sum", "values": [1]}).get(timeout=30)

    thread = threading.Thread(target=later)
    thread.start()
    try:
        result = invoke("watch", "--count", "4", "--seconds", "30", "--no-agents")
    finally:
        thread.join(timeout=40)
    assert result.exit_code == 0, result.output
    for status in ("PENDING", "ASSIGNED", "IN_PROGRESS", "COMPLETED"):
        assert status in result.stdout
    assert "4 events" in result.stdout


def test_unreachable_redis_is_one_line(redis_server: object) -> None:
    url = f"redis://:secret@127.0.0.1:{free_port()}/0"
    line = one_error_line(invoke("status", AGENTS_REDIS_URL=url))
    assert "cannot reach Redis" in line
    assert "secret" not in line  # the password is not printed


def test_metrics_once_prints_cluster_figures(deployment: LocalDeployment) -> None:
    folders = [f"--multiproc-dir={deployment.metrics_dir(n)}" for n in deployment.services]
    result = invoke("metrics", "--once", *folders)
    assert result.exit_code == 0, result.output
    assert 'agents_jobs_total{status="COMPLETED"}' in result.stdout
    assert 'agents_hop_seconds_count{outcome="ok",task="worker.execute",tier="worker"}' in (
        result.stdout
    )


def test_bench_stub_until_the_benchmark_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "_bench_main", lambda: None)
    assert "bench is not built yet" in one_error_line(invoke("bench"))


def test_bench_runs_the_benchmark_with_its_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def fake_main(argv: list[str]) -> int:
        seen.append(argv)
        return 0

    monkeypatch.setattr(cli, "_bench_main", lambda: fake_main)
    result = invoke("bench", "--jobs", "10")
    assert result.exit_code == 0, result.output
    assert seen == [["--jobs", "10"]]
