"""docker-compose.yml, Dockerfile and .env.example checked against the app (no Docker needed)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from project.core.celery_app import app
from project.core.constants import WORKER_QUEUE_PREFIX
from project.core.settings import Settings
from project.local.env_example import render_env_example
from project.local.topology import default_topology

ROOT = Path(__file__).resolve().parents[1]
SETTINGS_VARS = {f"AGENTS_{name.upper()}" for name in Settings.model_fields}
AGENT_SERVICES = ("coordinator", "beat", "distributor1", "distributor2", "w1", "w2", "w3")
ENV_LINE = re.compile(r"^#?\s*(AGENTS_[A-Z0-9_]+)=", re.MULTILINE)
INTERPOLATED = re.compile(r"\$\{(AGENTS_[A-Z0-9_]+)")

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def _argv(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def _consumed_queues(argv: list[str]) -> list[str]:
    queues: list[str] = []
    for i, arg in enumerate(argv):
        if arg in ("-Q", "--queues"):
            queues += argv[i + 1].split(",")
        elif arg.startswith("--queues="):
            queues += arg.split("=", 1)[1].split(",")
    return queues


def _routed_queues() -> set[str]:
    routes = app.conf.task_routes or {}
    routed = {route["queue"] for route in routes.values()}
    routed |= {queue.name for queue in app.conf.task_queues or ()}
    return routed


def test_compose_has_the_deployment(services: dict[str, dict[str, Any]]) -> None:
    topology = {
        s.name for s in default_topology(distributors=2, beat=True, flower=True, gateway=True)
    }
    assert set(services) == topology | {"redis"}


def test_compose_commands_equal_topology(services: dict[str, dict[str, Any]]) -> None:
    for service in default_topology(distributors=2, beat=True, flower=True, gateway=True):
        assert _argv(services[service.name]["command"]) == list(service.command), service.name


def test_every_consumed_queue_is_routed_to(services: dict[str, dict[str, Any]]) -> None:
    routed = _routed_queues()
    assert {"coordinator", "distributor"} <= routed
    consumed: set[str] = set()
    for name, service in services.items():
        if name == "redis":
            continue
        for queue in _consumed_queues(_argv(service["command"])):
            consumed.add(queue)
            is_worker_queue = re.fullmatch(
                re.escape(WORKER_QUEUE_PREFIX) + r"[A-Za-z0-9_.-]+", queue
            )
            assert queue in routed or is_worker_queue, f"{name} consumes unrouted {queue!r}"
    # ...and every queue the app routes to has a consumer.
    assert routed <= consumed
    assert {"worker.w1", "worker.w2", "worker.w3"} <= consumed


def test_each_worker_has_its_own_queue(services: dict[str, dict[str, Any]]) -> None:
    for worker in ("w1", "w2", "w3"):
        argv = _argv(services[worker]["command"])
        assert _consumed_queues(argv) == [f"worker.{worker}"]
        assert argv[argv.index("-n") + 1] == f"{worker}@%h"


def test_agents_variables_are_settings(services: dict[str, dict[str, Any]]) -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    used = set(INTERPOLATED.findall(text))
    for service in services.values():
        used |= {k for k in service.get("environment", {}) if k.startswith("AGENTS_")}
    assert used, "compose sets no AGENTS_ variable"
    assert used <= SETTINGS_VARS, used - SETTINGS_VARS


def test_env_example_lists_every_setting_and_nothing_else() -> None:
    text = (ROOT / ".env.example").read_text()
    listed = set(ENV_LINE.findall(text))
    assert listed == SETTINGS_VARS, {
        "missing": SETTINGS_VARS - listed,
        "not settings": listed - SETTINGS_VARS,
    }


def test_env_example_is_generated() -> None:
    assert (ROOT / ".env.example").read_text() == render_env_example(), (
        "regenerate: python -m project.local.env_example > .env.example"
    )


def test_env_example_defaults_match_settings() -> None:
    text = (ROOT / ".env.example").read_text()
    active = dict(re.findall(r"^(AGENTS_[A-Z0-9_]+)=(.*)$", text, re.MULTILINE))
    for name, field in Settings.model_fields.items():
        var = f"AGENTS_{name.upper()}"
        default = field.get_default(call_default_factory=True)
        if var in active and active[var] and default is not None:
            parsed = Settings.model_validate({name: active[var]})
            assert getattr(parsed, name) == default, var


def test_agents_get_redis_url_and_keys(services: dict[str, dict[str, Any]]) -> None:
    for name in (*AGENT_SERVICES, "flower", "gateway"):
        env = services[name]["environment"]
        assert re.fullmatch(
            r"redis://:\$\{REDIS_PASSWORD[^}]*\}@redis:6379/0", env["AGENTS_REDIS_URL"]
        ), name
        assert env["AGENTS_A2A_KEYS"].startswith("${AGENTS_A2A_KEYS"), name
        assert env.get("AGENTS_DEV_MODE", "false") == "false", name


def test_services_wait_for_healthy_redis(services: dict[str, dict[str, Any]]) -> None:
    for name in (*AGENT_SERVICES, "flower", "gateway"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy", name


def test_each_service_has_its_own_metrics_folder(services: dict[str, dict[str, Any]]) -> None:
    folders = [services[n]["environment"]["PROMETHEUS_MULTIPROC_DIR"] for n in AGENT_SERVICES]
    assert len(set(folders)) == len(folders)


def test_redis_is_durable_guarded_and_checked(services: dict[str, dict[str, Any]]) -> None:
    redis = services["redis"]
    argv = _argv(redis["command"])

    def option(name: str) -> str:
        return argv[argv.index(name) + 1]

    assert option("--appendonly") == "yes"
    assert option("--appendfsync") == "always"  # no acknowledged job lost in a crash
    assert option("--maxmemory-policy") == "noeviction"
    assert option("--requirepass").startswith("${REDIS_PASSWORD")
    check = " ".join(_argv(redis["healthcheck"]["test"]))
    assert "redis-cli" in check and "ping" in check
    assert redis["environment"]["REDISCLI_AUTH"].startswith("${REDIS_PASSWORD")
    assert any(str(v).endswith(":/data") for v in redis["volumes"])


def test_flower_requires_auth(services: dict[str, dict[str, Any]]) -> None:
    flower = services["flower"]
    env = flower["environment"]
    # Required (compose refuses to start without it), never anonymous.
    assert re.fullmatch(r"\$\{AGENTS_FLOWER_BASIC_AUTH:\?[^}]+\}", env["AGENTS_FLOWER_BASIC_AUTH"])
    assert "FLOWER_UNAUTHENTICATED_API" not in env
    assert env.get("AGENTS_DEV_MODE", "false") == "false"
    assert all(str(p).startswith("127.0.0.1:") for p in flower.get("ports", []))


def test_dockerfile_is_slim_and_not_root() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", text, re.MULTILINE)
    assert re.search(r"^RUN pip install \"\.\[all\]\"", text, re.MULTILINE)
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and users[-1] not in ("root", "0"), users
    images = {
        s.get("image")
        for n, s in yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"].items()
        if n != "redis"
    }
    assert len(images) == 1  # one image for every service


def test_the_gateway_requires_tokens_and_is_health_checked(
    services: dict[str, dict[str, Any]],
) -> None:
    gateway = services["gateway"]
    env = gateway["environment"]
    assert re.fullmatch(r"\$\{AGENTS_GATEWAY_TOKENS:\?[^}]+\}", env["AGENTS_GATEWAY_TOKENS"])
    assert env["AGENTS_GATEWAY_HOST"] == "0.0.0.0" and env["AGENTS_GATEWAY_PORT"] == "8700"
    assert env.get("AGENTS_DEV_MODE", "false") == "false"
    check = " ".join(_argv(gateway["healthcheck"]["test"]))
    assert "http://127.0.0.1:8700/healthz" in check
    assert all(str(p).startswith("127.0.0.1:") for p in gateway.get("ports", []))
