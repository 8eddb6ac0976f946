"""Run the A2A TCK against the gateway: ``python -m tests.integration.tck.run_tck``.

Starts an embedded Redis, every tier (workers with the test skills of
``gateway_skills``) and one gateway (default skill ``tck``, bearer token), then runs
the TCK's ``run_tck.py`` once per transport and prints the pass/fail/skip counts.

The TCK is not a dependency of the project: check out a2aproject/a2a-tck (branch
``1.0-dev``; the figures in docs/gateway.md are from commit 357c4a87) into a folder,
install it into a virtualenv of its own (``python -m venv V; V/bin/pip install -e
FOLDER``), and pass both::

    python -m tests.integration.tck.run_tck --tck FOLDER --python V/bin/python

``--serve`` only starts the system under test and prints its URL and token.

The TCK at that commit sends no credentials, and the gateway takes no call without a
bearer token; so the TCK talks to a small proxy in this process that adds the token to
every request and passes everything else through unchanged (the card advertises the
proxy's URL: ``AGENTS_GATEWAY_PUBLIC_URL``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import uvicorn
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from project.local.deployment import LocalDeployment
from project.local.embedded_redis import EmbeddedRedis, child_env, free_port
from project.local.topology import default_topology
from tests.integration.tck.processes import GatewayProcess

HERE = Path(__file__).resolve().parent
TOKEN = "tck-token-0123456789abcdef"
KEYS = "tck-k1:" + "t" * 48
STREAMING_TIMEOUT_S = "2"


_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


class AuthProxy:
    """ASGI app: every request goes on to ``upstream`` with the bearer token added."""

    def __init__(self, upstream: str, token: str) -> None:
        self._upstream = upstream
        self._token = token
        self._http = httpx.AsyncClient(base_url=upstream, timeout=None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers["authorization"] = f"Bearer {self._token}"
        upstream = self._http.build_request(
            request.method,
            request.url.path,
            params=request.query_params,
            headers=headers,
            content=await request.body(),
        )
        reply = await self._http.send(upstream, stream=True)
        response = StreamingResponse(
            reply.aiter_raw(),
            status_code=reply.status_code,
            headers={k: v for k, v in reply.headers.items() if k.lower() not in _HOP_BY_HOP},
            background=BackgroundTask(reply.aclose),
        )
        await response(scope, receive, send)


@contextmanager
def auth_proxy(port: int, upstream: str) -> Iterator[str]:
    """The proxy, served by uvicorn in a thread, at the URL it yields."""
    import threading

    server = uvicorn.Server(
        uvicorn.Config(AuthProxy(upstream, TOKEN), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def system_under_test(workdir: Path) -> Iterator[str]:
    """Redis, the tiers with the test skills, and one gateway replica."""
    with EmbeddedRedis(workdir / "redis", appendonly=False) as redis:
        env = child_env(
            AGENTS_REDIS_URL=redis.url,
            AGENTS_A2A_KEYS=KEYS,
            AGENTS_DEV_MODE="false",
            AGENTS_HANDLER_MODULES="gateway_skills",
            PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
            TCK_STREAMING_TIMEOUT=STREAMING_TIMEOUT_S,
            AGENTS_LOG_LEVEL="WARNING",
        )
        topology = default_topology(workers=("w1", "w2"), distributors=1, beat=True)
        deployment = LocalDeployment(topology, env=env, log_dir=workdir, workdir=workdir)
        with deployment:
            deployment.wait_ready(timeout_s=120)
            proxy_port = free_port()
            gateway = GatewayProcess(
                workdir,
                "gateway",
                **env,
                AGENTS_GATEWAY_TOKENS=f"tck:{TOKEN}",
                AGENTS_GATEWAY_DEFAULT_SKILL="tck",
                AGENTS_GATEWAY_PUBLIC_URL=f"http://127.0.0.1:{proxy_port}",
            ).start()
            try:
                with auth_proxy(proxy_port, gateway.url) as url:
                    yield url
            finally:
                gateway.stop()


def run_tck(tck: Path, python: str, url: str, transport: str, level: str) -> dict[str, int]:
    """One run of the TCK; the counts of its summary line."""
    env = {
        **os.environ,
        "A2A_AUTH_TYPE": "bearer",
        "A2A_AUTH_TOKEN": TOKEN,
        "TCK_STREAMING_TIMEOUT": STREAMING_TIMEOUT_S,
    }
    started = time.monotonic()
    out = subprocess.run(
        [
            python,
            "run_tck.py",
            "--sut-host",
            url,
            "--transport",
            transport,
            "--level",
            level,
            "--",
            "-rs",
        ],
        cwd=tck,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    text = out.stdout + out.stderr
    (Path(tempfile.gettempdir()) / f"tck-{transport}.log").write_text(text)
    counts = {k: 0 for k in ("passed", "failed", "skipped", "error", "xfailed", "xpassed")}
    summary = [line for line in text.splitlines() if re.search(r"\d+ (passed|failed)", line)]
    if summary:
        for number, word in re.findall(
            r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)", summary[-1]
        ):
            counts[word.rstrip("s") if word.startswith("error") else word] += int(number)
    counts["seconds"] = round(time.monotonic() - started)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tck", type=Path, help="a checkout of a2aproject/a2a-tck")
    parser.add_argument("--python", default=sys.executable, help="the TCK virtualenv's python")
    parser.add_argument("--transports", default="jsonrpc,http_json")
    parser.add_argument("--level", default="must")
    parser.add_argument("--serve", action="store_true", help="start the SUT and wait")
    args = parser.parse_args(argv)
    with (
        tempfile.TemporaryDirectory(prefix="gateway-tck-") as tmp,
        system_under_test(Path(tmp)) as url,
    ):
        if args.serve or args.tck is None:
            print(json.dumps({"url": url, "logs": tmp}), flush=True)
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                return 0
        results = {
            transport: run_tck(args.tck, args.python, url, transport, args.level)
            for transport in args.transports.split(",")
        }
    print(json.dumps(results, indent=2))
    return 0 if all(r["failed"] == 0 and r["error"] == 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
