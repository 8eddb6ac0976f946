"""``agents up``: every tier, beat and Flower from one command; Ctrl-C stops them all."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from project.local.embedded_redis import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_up_runs_everything_and_ctrl_c_stops_it(tmp_path: Path) -> None:
    flower_port = free_port()
    gateway_port = free_port()
    out_path = tmp_path / "up.out"
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("AGENTS_FLOWER_BASIC_AUTH", None)
    with out_path.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "project",
                "up",
                "--workers",
                "w1",
                "--distributors",
                "1",
                "--concurrency",
                "1",
                "--flower-port",
                str(flower_port),
                "--gateway-port",
                str(gateway_port),
                "--workdir",
                str(tmp_path / "run"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 180
            while "up: ready" not in out_path.read_text():
                assert process.poll() is None, out_path.read_text()
                assert time.monotonic() < deadline, out_path.read_text()
                time.sleep(0.5)
            text = out_path.read_text()
            pids = {
                name: int(pid) for name, pid in re.findall(r"│ (\S+)\s+│ \S+\s+│\s+(\d+) │", text)
            }
            assert set(pids) == {"coordinator", "beat", "distributor1", "w1", "flower", "gateway"}
            assert all(_alive(pid) for pid in pids.values())
            # Flower is up and refuses anonymous callers.
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(f"http://127.0.0.1:{flower_port}/api/workers", timeout=10)
            assert refused.value.code == 401
            # The A2A gateway serves its card openly, and refuses calls without the token.
            card_url = f"http://127.0.0.1:{gateway_port}/.well-known/agent-card.json"
            with urllib.request.urlopen(card_url, timeout=10) as card:
                assert b"supportedInterfaces" in card.read()
            call = urllib.request.Request(
                f"http://127.0.0.1:{gateway_port}/",
                data=b'{"jsonrpc": "2.0", "id": 1, "method": "ListTasks", "params": {}}',
                headers={"Content-Type": "application/json", "A2A-Version": "1.0"},
            )
            with pytest.raises(urllib.error.HTTPError) as no_token:
                urllib.request.urlopen(call, timeout=10)
            assert no_token.value.code == 401
            (token,) = re.findall(r"bearer token (\S+);", text)
            call.add_header("Authorization", f"Bearer {token}")
            with urllib.request.urlopen(call, timeout=10) as listed:
                assert b'"result"' in listed.read()
            (redis_url,) = re.findall(r"export AGENTS_REDIS_URL=(\S+)", text)

            process.send_signal(signal.SIGINT)  # what Ctrl-C does
            assert process.wait(timeout=90) == 0, out_path.read_text()
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
    text = out_path.read_text()
    assert "up: stopped" in text and "Traceback" not in text
    assert not [name for name, pid in pids.items() if _alive(pid)]
    with pytest.raises(RedisConnectionError):
        Redis.from_url(redis_url, socket_connect_timeout=1).ping()
