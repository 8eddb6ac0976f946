"""Screenshot Flower's dashboard with headless Chromium, for the docs (docs/flower.png).

By default it starts its own deployment (embedded Redis, every tier, beat and
Flower: the services of ``default_topology(flower=True)``), runs a few jobs so
that every tier has tasks, waits until Flower lists every worker, takes the
screenshot and stops everything::

    python tools/screenshot_flower.py [--out docs/flower.png] [--chromium chromium]

Needs a Chromium binary (``apt-get install -y chromium``).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from project.local.deployment import LocalDeployment  # noqa: E402
from project.local.embedded_redis import EmbeddedRedis, child_env, free_port  # noqa: E402
from project.local.topology import default_topology  # noqa: E402

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
)


def _api(port: int, path: str, auth: str) -> object:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    with urllib.request.urlopen(request, timeout=15) as reply:
        return json.loads(reply.read())


def _wait_for_workers(port: int, auth: str, nodes: set[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    seen: set[str] = set()
    while time.monotonic() < deadline:
        try:
            workers = _api(port, "/api/workers?refresh=1", auth)
            seen = set(workers) if isinstance(workers, dict) else set()
            if nodes <= seen:
                return
        except (urllib.error.URLError, OSError, ValueError):
            pass
        time.sleep(1)
    raise TimeoutError(f"Flower does not list {sorted(nodes - seen)}")


def screenshot(url: str, out: Path, chromium: str, size: str) -> None:
    """Load ``url`` in headless Chromium with a fresh profile and save a PNG."""
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        argv = [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={size}",
            "--virtual-time-budget=8000",
            f"--screenshot={out}",
            url,
        ]
        subprocess.run(argv, check=True, timeout=120, capture_output=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "flower.png")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    parser.add_argument("--size", default="1440,900", help="Window size, width,height.")
    parser.add_argument("--jobs", type=int, default=30, help="Jobs to run before the shot.")
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="flower-shot-"))
    auth = f"admin:{secrets.token_hex(12)}"
    port = free_port()
    workers = ("w1", "w2", "w3")
    with EmbeddedRedis(root / "redis") as server:
        env = child_env(
            AGENTS_REDIS_URL=server.url,
            AGENTS_A2A_KEYS=f"shot:{secrets.token_hex(32)}",
            AGENTS_FLOWER_BASIC_AUTH=auth,
            AGENTS_DEV_MODE="false",
        )
        os.environ.update(env)  # this process submits the jobs
        services = default_topology(
            workers=workers, distributors=2, beat=True, flower=True, flower_port=port
        )
        with LocalDeployment(services, env=env, log_dir=root / "logs", workdir=root) as running:
            running.wait_ready(timeout_s=120)
            host = socket.gethostname()
            nodes = {f"{n}@{host}" for n in ("coordinator", "distributor1", "distributor2")}
            nodes |= {f"{w}@{host}" for w in workers}
            _wait_for_workers(port, auth, nodes, timeout_s=60)

            from project.client import submit_many

            jobs = [
                {"task_type": "compute", "payload": {"operation": "sum", "values": [i, i]}}
                for i in range(args.jobs)
            ]
            for result in submit_many(jobs):
                result.get(timeout=60)
            time.sleep(2)  # let Flower take in the last task events
            args.out.parent.mkdir(parents=True, exist_ok=True)
            user, _, password = auth.partition(":")
            screenshot(
                f"http://{user}:{password}@127.0.0.1:{port}/", args.out, args.chromium, args.size
            )
    print(f"saved {args.out} ({args.out.stat().st_size} bytes); logs in {root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
