"""What the A2A gateway adds: ``python -m tools.bench.gateway``.

Starts a private redis-server, the tiers (1 coordinator, 1 distributor, 2 workers of
concurrency 2, no beat) and one gateway process, then measures, for the same no-op job
(``generic`` echoing a string):

* **latency**, one job at a time, the two ways interleaved: ``submit_task.delay(...)
  .get()`` from Python, and a blocking ``SendMessage`` through the gateway with the
  official client (and with a bare HTTP POST, to show what the client itself costs);
  the gateway's added latency is the difference of the p50s;
* **throughput**: blocking ``SendMessage`` requests per second with N requests in
  flight, against ``submit_task`` jobs per second at the same concurrency; and
  ``GetTask`` requests per second (the gateway alone, no job);
* **idle streams**: the same blocking ``SendMessage`` latency with ``--idle-streams``
  ``SubscribeToTask`` streams open on tasks waiting for input, against none open, and
  the Redis commands per second while those streams sit idle.

Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import redis as redis_py

from project.local.deployment import LocalDeployment
from project.local.embedded_redis import EmbeddedRedis, child_env, free_port
from project.local.topology import default_topology

KEYS = "bench-k1:" + "g" * 48
TOKEN = "bench-token-0123456789abcdef"
PAYLOAD = {"echo": "x"}
HEADERS = {"Authorization": f"Bearer {TOKEN}", "A2A-Version": "1.0"}
IDLE_SENDS = 30
"""Blocking ``SendMessage`` per series of the idle-streams measure."""
IDLE_WINDOW_S = 5.0
"""How long the Redis commands are counted while the streams sit idle."""
IDLE_COMMANDS = ("xread", "xrange", "hmget")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _summary(ms: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(ms), 2),
        "p90_ms": round(_pct(ms, 0.9), 2),
        "p99_ms": round(_pct(ms, 0.99), 2),
        "n": len(ms),
    }


def _rpc_body(
    message_id: str, skill: str = "generic", part: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": message_id,
        "method": "SendMessage",
        "params": {
            "message": {
                "messageId": message_id,
                "role": "ROLE_USER",
                "parts": [part or {"data": PAYLOAD}],
                "metadata": {"skill": skill},
            }
        },
    }


def _command_rates(
    before: dict[str, Any], after: dict[str, Any], seconds: float
) -> dict[str, float]:
    """Calls per second of :data:`IDLE_COMMANDS` and of all commands, from two
    ``INFO commandstats`` replies."""

    def calls(info: dict[str, Any], name: str) -> int:
        return int(info.get(f"cmdstat_{name}", {}).get("calls", 0))

    names = [key.removeprefix("cmdstat_") for key in after]
    rates = {name: (calls(after, name) - calls(before, name)) / seconds for name in IDLE_COMMANDS}
    rates["total"] = sum(calls(after, name) - calls(before, name) for name in names) / seconds
    return {name: round(rate, 1) for name, rate in rates.items()}


class Gateway:
    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = (workdir / "gateway.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "project", "gateway", "--port", str(self.port)],
            env={**env, "AGENTS_GATEWAY_TOKENS": f"bench:{TOKEN}", "AGENTS_LOG_LEVEL": "WARNING"},
            stdout=self._log,
            stderr=self._log,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("the gateway did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)
        self._log.close()


async def _latencies(url: str, rounds: int, submit: Callable[[], Any]) -> dict[str, list[float]]:
    from a2a.client import ClientConfig, ClientFactory
    from a2a.types.a2a_pb2 import Message, Part, Role, SendMessageRequest
    from google.protobuf.json_format import ParseDict
    from google.protobuf.struct_pb2 import Value

    out: dict[str, list[float]] = {"delay_get": [], "sdk_send": [], "http_send": []}
    loop = asyncio.get_running_loop()
    async with httpx.AsyncClient(headers=HEADERS, timeout=60) as http:
        config = ClientConfig(streaming=False, httpx_client=http)
        client = await ClientFactory(config).create_from_url(url)

        async def sdk() -> None:
            message = Message(
                message_id=uuid.uuid4().hex,
                role=Role.ROLE_USER,
                parts=[Part(data=ParseDict(PAYLOAD, Value()))],
            )
            message.metadata.update({"skill": "generic"})
            [response] = [r async for r in client.send_message(SendMessageRequest(message=message))]
            assert response.task.status.state == 3, response  # COMPLETED

        async def raw() -> None:
            reply = await http.post(url + "/", json=_rpc_body(uuid.uuid4().hex))
            assert reply.json()["result"]["task"]["status"]["state"] == "TASK_STATE_COMPLETED"

        async def bare() -> None:
            await loop.run_in_executor(None, submit)

        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("delay_get", bare),
            ("sdk_send", sdk),
            ("http_send", raw),
        ]
        for _ in range(10):  # warm-up: connections, caches, imports
            for _, step in steps:
                await step()
        for _ in range(rounds):
            for name, step in steps:
                started = time.perf_counter()
                await step()
                out[name].append((time.perf_counter() - started) * 1000)
        await client.close()
    return out


async def _gateway_rate(
    url: str, total: int, concurrency: int, body: Callable[[], dict[str, Any]]
) -> float:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(headers=HEADERS, timeout=120, limits=limits) as http:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(total):
            queue.put_nowait(i)

        async def worker() -> None:
            while not queue.empty():
                queue.get_nowait()
                reply = await http.post(url + "/", json=body())
                assert "result" in reply.json(), reply.text

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return total / (time.perf_counter() - started)


async def _idle_streams(url: str, redis_url: str, streams: int, concurrency: int) -> dict[str, Any]:
    """Blocking ``SendMessage`` latency with no stream open, then with ``streams`` idle
    ``SubscribeToTask`` streams open (on ~streams/3 tasks waiting for input), and the Redis
    commands per second while those streams sit idle."""
    limits = httpx.Limits(max_connections=streams + 50, max_keepalive_connections=streams + 50)
    async with httpx.AsyncClient(headers=HEADERS, timeout=120, limits=limits) as http:

        async def sends(n: int) -> list[float]:
            out = []
            for _ in range(n):
                started = time.perf_counter()
                reply = await http.post(url + "/", json=_rpc_body(uuid.uuid4().hex))
                assert reply.json()["result"]["task"]["status"]["state"] == "TASK_STATE_COMPLETED"
                out.append((time.perf_counter() - started) * 1000)
            return out

        gate = asyncio.Semaphore(concurrency)

        async def park() -> str:
            # The built-in ``assistant`` agent every worker loads (offline scripted model)
            # parks at its review step: input-required, no need for the tests' gw_ask skill.
            async with gate:
                body = _rpc_body(uuid.uuid4().hex, "assistant", {"text": "hello"})
                task = (await http.post(url + "/", json=body)).json()["result"]["task"]
                assert task["status"]["state"] == "TASK_STATE_INPUT_REQUIRED", task
                return str(task["id"])

        opened: list[str] = []

        async def follow(task_id: str) -> None:
            body = {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "SubscribeToTask",
                "params": {"id": task_id},
            }
            headers = {"Accept": "text/event-stream"}
            async with http.stream("POST", url + "/", json=body, headers=headers) as reply:
                assert reply.status_code == 200, reply.status_code
                opened.append(task_id)
                async for _ in reply.aiter_lines():
                    pass

        await sends(5)  # warm-up: this client's connections
        base = await sends(IDLE_SENDS)
        task_ids = await asyncio.gather(*(park() for _ in range(max(1, streams // 3))))
        followers = [
            asyncio.create_task(follow(task_ids[i % len(task_ids)])) for i in range(streams)
        ]
        try:
            async with asyncio.timeout(120):
                while len(opened) < streams:
                    for done in (f for f in followers if f.done()):
                        done.result()  # raises what ended a stream early
                        raise RuntimeError("a SubscribeToTask stream ended early")
                    await asyncio.sleep(0.1)
            await asyncio.sleep(3)  # let the streams settle into idle
            client = redis_py.Redis.from_url(redis_url)
            before = client.info("commandstats")
            started = time.monotonic()
            await asyncio.sleep(IDLE_WINDOW_S)
            rates = _command_rates(before, client.info("commandstats"), time.monotonic() - started)
            client.close()
            loaded = await sends(IDLE_SENDS)
        finally:
            for follower in followers:
                follower.cancel()
            await asyncio.gather(*followers, return_exceptions=True)
    no_streams, with_streams = _summary(base), _summary(loaded)
    return {
        "idle_streams": streams,
        "idle_tasks": len(task_ids),
        "send_p50_ms_no_streams": no_streams["p50_ms"],
        "send_p90_ms_no_streams": no_streams["p90_ms"],
        "send_p50_ms_with_streams": with_streams["p50_ms"],
        "send_p90_ms_with_streams": with_streams["p90_ms"],
        "idle_redis_cmds_per_s": rates,
    }


def _bare_rate(submit: Callable[[], Any], total: int, concurrency: int) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda _: submit(), range(total)))
    return total / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200, help="jobs per latency series")
    parser.add_argument("--total", type=int, default=1000, help="requests per throughput run")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--idle-streams", type=int, default=300, help="SSE streams open idle (0: skip)"
    )
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    started = dt.datetime.now(dt.UTC)
    try:
        with EmbeddedRedis(tmp / "redis", appendonly=False) as redis:
            env = child_env(
                AGENTS_REDIS_URL=redis.url,
                AGENTS_A2A_KEYS=KEYS,
                AGENTS_DEV_MODE="false",
                AGENTS_ASSISTANT_MODEL="fake",  # the idle-streams measure parks assistant jobs
            )
            os.environ.update(env)  # this process submits too, to the same Redis
            from project import submit_task

            topology = default_topology(workers=("w1", "w2"), distributors=1, beat=False)
            with LocalDeployment(topology, env=env, log_dir=tmp, workdir=tmp) as deployment:
                deployment.wait_ready(timeout_s=120)
                gateway = Gateway(tmp, env)
                try:

                    def submit() -> Any:
                        return submit_task.delay("generic", PAYLOAD).get(timeout=60)

                    latency = asyncio.run(_latencies(gateway.url, args.rounds, submit))
                    send_rate = asyncio.run(
                        _gateway_rate(
                            gateway.url,
                            args.total,
                            args.concurrency,
                            lambda: _rpc_body(uuid.uuid4().hex),
                        )
                    )
                    bare_rate = _bare_rate(submit, args.total, args.concurrency)
                    task_id = _one_task(gateway.url)
                    get_rate = asyncio.run(
                        _gateway_rate(
                            gateway.url,
                            args.total * 2,
                            args.concurrency,
                            lambda: {
                                "jsonrpc": "2.0",
                                "id": 1,
                                "method": "GetTask",
                                "params": {"id": task_id},
                            },
                        )
                    )
                    idle: dict[str, Any] = {"idle_streams": 0}
                    if args.idle_streams > 0:
                        idle = asyncio.run(
                            _idle_streams(
                                gateway.url, redis.url, args.idle_streams, args.concurrency
                            )
                        )
                finally:
                    gateway.stop()
    finally:
        if not args.keep_logs:
            shutil.rmtree(tmp, ignore_errors=True)
    summaries = {name: _summary(ms) for name, ms in latency.items()}
    report = {
        "date": started.isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "latency": summaries,
        "added_p50_ms": round(
            summaries["sdk_send"]["p50_ms"] - summaries["delay_get"]["p50_ms"], 2
        ),
        "added_p50_ms_http": round(
            summaries["http_send"]["p50_ms"] - summaries["delay_get"]["p50_ms"], 2
        ),
        "concurrency": args.concurrency,
        "send_message_per_s": round(send_rate, 1),
        "submit_task_per_s": round(bare_rate, 1),
        "get_task_per_s": round(get_rate, 1),
        **idle,
    }
    _print(report)
    print(json.dumps(report))
    return 0


def _one_task(url: str) -> str:
    reply = httpx.post(url + "/", json=_rpc_body(uuid.uuid4().hex), headers=HEADERS, timeout=60)
    return str(reply.json()["result"]["task"]["id"])


def _print(report: dict[str, Any]) -> None:
    lat = report["latency"]
    print(f"gateway bench, {report['date']} ({report['machine']})")
    print(f"{'one job at a time':34} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}")
    for name, label in (
        ("delay_get", "submit_task.delay().get()"),
        ("sdk_send", "SendMessage, a2a-sdk client"),
        ("http_send", "SendMessage, bare HTTP POST"),
    ):
        s = lat[name]
        print(f"{label:34} {s['p50_ms']:>8} {s['p90_ms']:>8} {s['p99_ms']:>8}")
    print(
        f"added by the gateway (p50): {report['added_p50_ms']} ms (client), "
        f"{report['added_p50_ms_http']} ms (HTTP)"
    )
    c = report["concurrency"]
    print(
        f"throughput, {c} in flight: SendMessage {report['send_message_per_s']}/s, "
        f"submit_task {report['submit_task_per_s']}/s, GetTask {report['get_task_per_s']}/s"
    )
    n = report["idle_streams"]
    if n:
        print(f"{'one job at a time':34} {'p50 ms':>8} {'p90 ms':>8}")
        for label, key in (
            ("SendMessage, no stream open", "no_streams"),
            (f"SendMessage, {n} idle streams open", "with_streams"),
        ):
            print(f"{label:34} {report['send_p50_ms_' + key]:>8} {report['send_p90_ms_' + key]:>8}")
        rates = ", ".join(f"{k} {v}" for k, v in report["idle_redis_cmds_per_s"].items())
        print(f"Redis commands/s, {n} streams idle on {report['idle_tasks']} tasks: {rates}")


if __name__ == "__main__":
    raise SystemExit(main())
