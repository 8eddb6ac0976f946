"""Flower, started with the topology's own command, against the session's live deployment."""

from __future__ import annotations

import base64
import dataclasses
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from project import submit_task
from project.local.deployment import LocalDeployment
from project.local.embedded_redis import child_env, free_port
from project.local.topology import Service, default_topology

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

AUTH = "ops:" + "f" * 24
HOST = socket.gethostname()
NODES = {f"{name}@{HOST}" for name in ("coordinator", "distributor1", "w1", "w2", "w3")}


def flower_service(port: int) -> Service:
    """The topology's Flower service (the command compose runs), on ``port``."""
    (service,) = [s for s in default_topology(flower=True) if s.tier == "flower"]
    return dataclasses.replace(service, env={**service.env, "FLOWER_PORT": str(port)})


def get(port: int, path: str, auth: str | None = None, timeout: float = 15) -> tuple[int, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if auth is not None:
        token = base64.b64encode(auth.encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            body = reply.read()
            is_json = reply.headers.get_content_type() == "application/json"
            return reply.status, json.loads(body) if is_json else body
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def start_flower(tmp: Path, **env: str) -> tuple[LocalDeployment, int]:
    port = free_port()
    runner = LocalDeployment([flower_service(port)], env=child_env(**env), log_dir=tmp)
    runner.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if runner.processes["flower"].poll() is not None:
            return runner, port  # exited; the caller checks why
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthcheck", timeout=2):
                return runner, port
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    runner.stop()
    raise TimeoutError(f"Flower did not answer; see {tmp}/flower.log")


@pytest.fixture(scope="module")
def flower(deployment: LocalDeployment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    runner, port = start_flower(tmp_path_factory.mktemp("flower"), AGENTS_FLOWER_BASIC_AUTH=AUTH)
    yield port
    runner.stop()
    assert runner.processes["flower"].returncode is not None


def test_anonymous_calls_are_refused(flower: int) -> None:
    assert get(flower, "/api/workers")[0] == 401
    assert get(flower, "/api/tasks")[0] == 401
    assert get(flower, "/")[0] == 401  # the dashboard too
    assert get(flower, "/api/workers", auth="ops:wrong")[0] == 401


def test_api_lists_the_workers_of_every_tier(flower: int) -> None:
    deadline = time.monotonic() + 60
    seen: set[str] = set()
    while time.monotonic() < deadline:
        status, workers = get(flower, "/api/workers?refresh=1", auth=AUTH)
        assert status == 200
        seen = set(workers)
        if seen >= NODES:
            break
        time.sleep(1)
    assert seen >= NODES, f"missing {NODES - seen}"
    queues = {q["name"] for node in NODES for q in workers[node].get("active_queues", [])}
    assert {"coordinator", "distributor", "worker.w1", "worker.w2", "worker.w3"} <= queues


def test_flower_sees_the_tasks_of_every_tier(flower: int) -> None:
    result = submit_task.delay("compute", {"operation": "sum", "values": [2, 3]})
    assert result.get(timeout=30)["result"] == 5
    wanted = {"project.coordinator.submit", "project.distributor.assign", "project.worker.execute"}
    deadline = time.monotonic() + 30
    names: set[str] = set()
    while time.monotonic() < deadline:
        status, tasks = get(flower, "/api/tasks?limit=1000", auth=AUTH)
        assert status == 200
        names = {t.get("name") for t in tasks.values() if t.get("root_id") == result.id}
        names |= {t.get("name") for uuid, t in tasks.items() if uuid == result.id}
        if wanted <= names:
            break
        time.sleep(0.5)
    assert wanted <= names


def test_flower_refuses_to_start_without_auth(deployment: LocalDeployment, tmp_path: Path) -> None:
    runner, _ = start_flower(tmp_path, AGENTS_DEV_MODE="false", AGENTS_FLOWER_BASIC_AUTH="")
    try:
        process = runner.processes["flower"]
        assert process.wait(timeout=30) == 2
    finally:
        runner.stop()
    assert "Flower needs authentication" in (tmp_path / "flower.log").read_text()


def test_dev_mode_allows_anonymous_api(deployment: LocalDeployment, tmp_path: Path) -> None:
    runner, port = start_flower(tmp_path, AGENTS_DEV_MODE="true", AGENTS_FLOWER_BASIC_AUTH="")
    try:
        assert get(port, "/api/workers")[0] == 200
    finally:
        runner.stop()
