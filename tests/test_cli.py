"""The operators' CLI against the session's private Redis and live deployment."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from support.polling import wait_for
from typer.testing import CliRunner, Result

from project.cli import EXIT_ALREADY_FINAL, app
from project.core.constants import CHANNEL_AGENTS, CHANNEL_JOBS
from project.core.models import AgentCard, JobStatus
from project.core.runtime import get_runtime
from project.core.state.registry import AgentRegistry
from project.local.deployment import LocalDeployment
from project.local.embedded_redis import free_port

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


EVENT_LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d{3}  (job|agent)\s+(\S+)  (.*)$")
FIELD = re.compile(r"\b(epoch|assignee)=(\S+)")


def _subscribers(redis: Redis, channel: str) -> int:
    ((_, count),) = redis.pubsub_numsub(channel)
    return int(count)


def watch_while(act: Callable[[], None], channel: str, *args: str) -> Result:
    """Run ``agents watch *args``; ``act`` runs in a thread once watch listens on ``channel``."""
    redis = get_runtime().redis
    listening_before = _subscribers(redis, channel)
    failures: list[BaseException] = []

    def when_subscribed() -> None:
        try:
            wait_for(lambda: _subscribers(redis, channel) > listening_before, 20, "watch")
            act()
        except BaseException as exc:  # re-raised in the test's thread
            failures.append(exc)

    thread = threading.Thread(target=when_subscribed)
    thread.start()
    try:
        result = invoke("watch", "--seconds", "30", *args)
    finally:
        thread.join(timeout=40)
    if failures:
        raise failures[0]
    assert result.exit_code == 0, result.output
    return result


def event_lines(result: Result) -> list[tuple[str, str, str]]:
    """(kind, id, rest) of every event line watch printed, in order."""
    lines = result.stdout.splitlines()
    assert lines[0].startswith("watching "), result.stdout
    found = [EVENT_LINE.match(line) for line in lines[1:-1]]
    assert all(found), result.stdout
    return [(m.group(1), m.group(2), m.group(3).strip()) for m in found if m]


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

    submitted: list[str] = []

    def submit() -> None:
        job = submit_task.delay("compute", {"operation": "sum", "values": [1]})
        submitted.append(job.id)
        assert job.get(timeout=30)["result"] == 1

    result = watch_while(submit, CHANNEL_JOBS, "--count", "4", "--no-agents")

    assert result.stdout.splitlines()[0] == (
        f"watching {CHANNEL_JOBS} on {get_runtime().settings.redis_url} (Ctrl-C stops)"
    )
    (job_id,) = submitted
    events = event_lines(result)
    assert [(kind, who) for kind, who, _ in events] == [("job", job_id)] * 4
    statuses = [rest.split()[0] for _, _, rest in events]
    assert statuses == ["PENDING", "ASSIGNED", "IN_PROGRESS", "COMPLETED"]
    # Fields after the status come in the order the script's cjson wrote them.
    details = [dict(FIELD.findall(rest)) for _, _, rest in events]
    assert details[0] == {"epoch": "0"}
    (moved,) = {tuple(sorted(d.items())) for d in details[1:]}  # one epoch, one worker
    assert moved in [(("assignee", w), ("epoch", "1")) for w in ("w1", "w2", "w3")], moved
    assert result.stdout.splitlines()[-1] == "4 events"


def test_watch_prints_agent_events(deployment: LocalDeployment, redis_client: Redis) -> None:
    # Pub/sub is per server, not per database: a probe agent on the scratch database
    # is seen by watch, and the deployment's registry (database 0) is left alone.
    registry = AgentRegistry(redis_client)
    probe = AgentCard(
        name="watch-probe",
        description="an agent that only registers",
        version="0",
        url="celery://worker.watch-probe",
        skills=[],
        id="watch-probe",
        tier="worker",
        queue="worker.watch-probe",
    )

    def come_and_go() -> None:
        registry.register(probe)
        registry.mark_dead(probe.id)
        registry.deregister(probe.id)

    result = watch_while(come_and_go, CHANNEL_AGENTS, "--count", "3", "--no-jobs")

    assert result.stdout.splitlines()[0].startswith(f"watching {CHANNEL_AGENTS} on ")
    assert event_lines(result) == [
        ("agent", "watch-probe", "registered"),
        ("agent", "watch-probe", "dead"),
        ("agent", "watch-probe", "deregistered"),
    ]
    assert result.stdout.splitlines()[-1] == "3 events"


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


# --- agents: submit --follow, job, events, resume, cancel, watch ------------------------

ASSISTANT_REQUEST = '{"request": "What is 12 * 3.5, and the price of a widget?"}'
DRAFT = "12 * 3.5 = 42; widget = 2.50 EUR"
DECLINED = "Declined: the reviewer did not approve this answer."


def submitted_id(result: Result) -> str:
    (job_id,) = [line.split()[-1] for line in result.stdout.splitlines() if "submitted job" in line]
    return job_id


def park_an_assistant() -> tuple[Result, str]:
    """``submit assistant ... --follow``: it prints the run and stops at the approval."""
    result = invoke("submit", "assistant", ASSISTANT_REQUEST, "--follow", "--timeout", "30")
    assert result.exit_code == 0, result.output
    return result, submitted_id(result)


def test_submit_follow_prints_the_run_and_stops_when_the_agent_waits(
    deployment: LocalDeployment,
) -> None:
    from project import get_job

    result, job_id = park_an_assistant()

    view = get_job(job_id)
    assert view.status is JobStatus.INPUT_REQUIRED
    (pending,) = view.interrupts
    assert pending.value == {"question": "Send this answer?", "proposed": DRAFT}
    kinds = [line.split()[1] for line in result.stdout.splitlines() if EVENT_AT.match(line)]
    assert kinds[:3] == ["status"] * 3 and kinds[-1] == "status", result.stdout
    assert {"update", "custom"} <= set(kinds[3:-1]), result.stdout
    statuses = [line.split()[2] for line in result.stdout.splitlines() if line[14:20] == "status"]
    assert statuses == ["PENDING", "ASSIGNED", "IN_PROGRESS", "INPUT_REQUIRED"]
    assert '{"tool": "calculator", "args": {"expression": "12 * 3.5"}}' in result.stdout
    assert '{"tool": "lookup_price", "result": "2.50 EUR"}' in result.stdout
    assert (
        f'interrupt {pending.id}: {{"question": "Send this answer?", "proposed": "{DRAFT}"}}'
        in result.stdout
    )
    assert f"python -m project resume {job_id} 'VALUE'" in result.stdout
    assert f"python -m project cancel {job_id}" in result.stdout


EVENT_AT = re.compile(r"^\d\d:\d\d:\d\d\.\d{3}  (status|update|custom)  ")


def test_submit_follow_of_a_plain_job_prints_its_result(deployment: LocalDeployment) -> None:
    result = invoke(
        "submit",
        "compute",
        '{"operation": "sum", "values": [40, 2]}',
        "--follow",
        "--timeout",
        "30",
    )
    assert result.exit_code == 0, result.output
    assert "COMPLETED" in result.stdout and '"result": 42' in result.stdout


def test_submit_follow_of_a_failing_job_is_one_error_line(deployment: LocalDeployment) -> None:
    result = invoke(
        "submit",
        "compute",
        '{"operation": "cube-root", "values": [8]}',
        "--follow",
        "--timeout",
        "30",
    )
    assert "InvalidPayloadError" in one_error_line(result)
    assert "FAILED" in result.stdout


def test_job_shows_the_interrupts_and_the_last_events(deployment: LocalDeployment) -> None:
    from project import get_job

    _, job_id = park_an_assistant()
    (pending,) = get_job(job_id).interrupts

    result = invoke("job", job_id)
    assert result.exit_code == 0, result.output
    for text in ("INPUT_REQUIRED", "waits for", pending.id, "Send this answer?", "retries"):
        assert text in result.stdout
    assert re.search(r"last 10 of \d+ events", result.stdout), result.stdout
    assert f"python -m project resume {job_id} 'VALUE'" in result.stdout

    report = json.loads(invoke("job", job_id, "--json", "--last", "3").stdout)
    assert report["interrupts"] == [pending.model_dump(mode="json")]
    assert report["record"]["retries"] == 0
    assert len(report["events"]) == 3 and report["events_logged"] > 3
    assert report["events"][-1]["data"]["status"] == "INPUT_REQUIRED"
    everything = list(get_runtime().joblog.read(job_id))
    assert [e["id"] for e in report["events"]] == [e.id for e in everything[-3:]]


@pytest.mark.parametrize(
    ("answer", "expected"),
    [('{"approved": true}', DRAFT), ("yes", DRAFT), ("not like this", DECLINED)],
)
def test_resume_answers_the_agent(deployment: LocalDeployment, answer: str, expected: str) -> None:
    from celery.result import AsyncResult

    from project import get_job

    _, job_id = park_an_assistant()

    result = invoke("resume", job_id, answer, "--follow", "--timeout", "30")

    assert result.exit_code == 0, result.output
    assert f"resumed job {job_id} with {json.dumps(_as_value(answer))}" in result.stdout
    statuses = [line.split()[2] for line in result.stdout.splitlines() if line[14:20] == "status"]
    assert statuses[0] == "PENDING" and statuses[-1] == "COMPLETED", result.stdout
    assert "INPUT_REQUIRED" not in statuses  # only the events after the resume
    assert json.dumps(expected) in result.stdout
    assert get_job(job_id).result == expected
    assert AsyncResult(job_id).get(timeout=10) == expected


def _as_value(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return text


def test_resume_of_a_job_that_does_not_wait_is_one_line(deployment: LocalDeployment) -> None:
    _, job_id = submit_and_wait("compute", '{"operation": "sum", "values": [1]}')
    line = one_error_line(invoke("resume", job_id, "yes"))
    assert "JobNotWaitingError" in line and "not waiting for input" in line
    assert "JobNotFoundError" in one_error_line(invoke("resume", "nope", "yes"))


def test_cancel_ends_a_waiting_agent_and_leaves_a_final_job_alone(
    deployment: LocalDeployment,
) -> None:
    from celery.result import AsyncResult

    from project import JobCanceledError, get_job

    _, job_id = park_an_assistant()

    result = invoke("cancel", job_id)
    assert result.exit_code == 0, result.output
    assert f"job {job_id} canceled (it was INPUT_REQUIRED)" in result.stdout
    assert get_job(job_id).status is JobStatus.CANCELED
    with pytest.raises(JobCanceledError):
        AsyncResult(job_id).get(timeout=10)

    again = invoke("cancel", job_id)
    assert again.exit_code == EXIT_ALREADY_FINAL, again.output
    assert f"job {job_id} is CANCELED already: nothing changed" in again.stdout
    assert "JobCanceledError" in invoke("job", job_id).stdout


def test_cancel_of_a_completed_job_changes_nothing(deployment: LocalDeployment) -> None:
    _, job_id = submit_and_wait("compute", '{"operation": "sum", "values": [5]}')
    result = invoke("cancel", job_id)
    assert result.exit_code == EXIT_ALREADY_FINAL, result.output
    assert "COMPLETED already: nothing changed" in result.stdout
    assert "JobNotFoundError" in one_error_line(invoke("cancel", "nope"))


def test_events_reads_on_from_a_cursor(deployment: LocalDeployment) -> None:
    _, job_id = submit_and_wait("compute", '{"operation": "sum", "values": [3]}')

    everything = invoke("events", job_id, "--json")
    assert everything.exit_code == 0, everything.output
    logged = [json.loads(line) for line in everything.stdout.splitlines()]
    assert [e["data"]["status"] for e in logged] == [
        "PENDING",
        "ASSIGNED",
        "IN_PROGRESS",
        "COMPLETED",
    ]

    rest = invoke("events", job_id, "--after", logged[1]["id"], "--follow", "--timeout", "10")
    assert rest.exit_code == 0, rest.output
    lines = rest.stdout.splitlines()
    assert [line.split()[2] for line in lines[:-1]] == ["IN_PROGRESS", "COMPLETED"]
    assert lines[-1] == f"2 events; last cursor {logged[-1]['id']}"
    assert "JobNotFoundError" not in rest.output
    assert "no job 'nope'" in one_error_line(invoke("events", "nope"))


def test_watch_shows_an_agents_progress_and_its_interrupts(deployment: LocalDeployment) -> None:
    from project import get_job, submit_task

    submitted: list[str] = []

    def submit() -> None:
        job = submit_task.delay("assistant", json.loads(ASSISTANT_REQUEST))
        submitted.append(job.id)

    # PENDING, ASSIGNED, IN_PROGRESS, 3 step updates, 4 tool events, INPUT_REQUIRED.
    result = watch_while(submit, CHANNEL_JOBS, "--count", "11", "--no-agents")

    (job_id,) = submitted
    lines = result.stdout.splitlines()
    events = [EVENT_LINE.match(line) for line in lines[1:-2]]
    assert all(events) and all(m.group(2) == job_id for m in events if m), result.stdout
    kinds = [m.group(3).split()[0] for m in events if m]
    assert kinds[:3] == ["PENDING", "ASSIGNED", "IN_PROGRESS"], result.stdout
    assert kinds[-1] == "INPUT_REQUIRED", result.stdout
    assert sorted(kinds[3:-1]) == ["custom"] * 4 + ["update"] * 3, result.stdout
    assert '{"tool": "calculator", "args": {"expression": "12 * 3.5"}}' in result.stdout
    (pending,) = get_job(job_id).interrupts
    assert lines[-2].strip() == (
        f'interrupt {pending.id}: {{"question": "Send this answer?", "proposed": "{DRAFT}"}}'
    )
    assert lines[-1] == "11 events"
