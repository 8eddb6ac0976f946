"""``agents up``: an embedded Redis, every tier, beat and Flower, until Ctrl-C.

The processes are the services of :func:`~project.local.topology.default_topology`
(the commands docker-compose.yml declares), run by
:class:`~project.local.deployment.LocalDeployment`. Ctrl-C (or SIGTERM) stops the agents
with a warm shutdown first, then Redis.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import signal
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType

from rich.console import Console
from rich.table import Table

from project.core.errors import ConfigurationError
from project.local.deployment import LocalDeployment
from project.local.embedded_redis import EmbeddedRedis, child_env
from project.local.topology import Service, default_topology


@dataclasses.dataclass(frozen=True)
class UpOptions:
    """What ``agents up`` starts."""

    workers: tuple[str, ...] = ("w1", "w2", "w3")
    distributors: int = 2
    concurrency: int = 2
    flower_port: int = 5555
    gateway_port: int = 8700
    metrics_port: int | None = None
    """Base port: the n-th agent process serves ``/metrics`` on ``metrics_port + n``."""
    workdir: Path | None = None
    ready_timeout_s: float = 120.0


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _answers(url: str, timeout_s: float) -> bool:
    """True once ``url`` answers 2xx (before ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except (urllib.error.URLError, OSError):
            time.sleep(0.3)
    return False


def _wait_for_flower(port: int, timeout_s: float) -> bool:
    return _answers(f"http://127.0.0.1:{port}/healthcheck", timeout_s)


def _services(options: UpOptions) -> list[Service]:
    services = default_topology(
        workers=options.workers,
        distributors=options.distributors,
        concurrency=options.concurrency,
        beat=True,
        flower=True,
        flower_port=options.flower_port,
        gateway=True,
        gateway_port=options.gateway_port,
    )
    return services


def run_up(options: UpOptions, console: Console | None = None) -> int:
    """Run until interrupted; return the exit code (0 after a clean stop)."""
    console = console or Console()
    root = options.workdir or Path(tempfile.mkdtemp(prefix="agents-up-"))
    root.mkdir(parents=True, exist_ok=True)
    keys = os.environ.get("AGENTS_A2A_KEYS") or f"up-{secrets.token_hex(4)}:{secrets.token_hex(32)}"
    given_tokens = os.environ.get("AGENTS_GATEWAY_TOKENS")
    gateway_tokens = given_tokens or f"operator:{secrets.token_urlsafe(24)}"
    given_auth = os.environ.get("AGENTS_FLOWER_BASIC_AUTH")
    flower_auth = given_auth or f"admin:{secrets.token_urlsafe(12)}"
    # Ctrl-C and SIGTERM both stop cleanly, even when started in the background
    # (where the shell set SIGINT to "ignore").
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    server = EmbeddedRedis(root / "redis", password=secrets.token_urlsafe(18))
    deployment: LocalDeployment | None = None
    try:
        server.start()
        env = child_env(
            AGENTS_REDIS_URL=server.url,
            AGENTS_A2A_KEYS=keys,
            AGENTS_FLOWER_BASIC_AUTH=flower_auth,
            AGENTS_GATEWAY_TOKENS=gateway_tokens,
        )
        if options.metrics_port is not None:
            env["AGENTS_METRICS_PORT"] = str(options.metrics_port)
        deployment = LocalDeployment(
            _services(options), env=env, log_dir=root / "logs", workdir=root
        )
        console.print(
            f"[bold]up[/]: starting {len(deployment.services)} processes (logs in {root})"
        )
        deployment.start()
        deployment.wait_ready(timeout_s=options.ready_timeout_s)
        if not _wait_for_flower(options.flower_port, timeout_s=30):
            raise ConfigurationError(
                f"Flower did not answer on port {options.flower_port}; "
                f"see {deployment.log_dir}/flower.log"
            )
        if not _answers(f"http://127.0.0.1:{options.gateway_port}/healthz", timeout_s=30):
            raise ConfigurationError(
                f"the A2A gateway did not answer on port {options.gateway_port}; "
                f"see {deployment.log_dir}/gateway.log"
            )
        caller, _, token = gateway_tokens.split(",")[0].partition(":")
        shown_token = token if not given_tokens else "<from AGENTS_GATEWAY_TOKENS>"
        gateway_line = (
            f"A2A:     http://127.0.0.1:{options.gateway_port}/  (caller {caller}, "
            f"bearer token {shown_token}; card at /.well-known/agent-card.json)"
        )
        _print_ready(
            console, deployment, server, options, flower_auth, gateway_line, shown=not given_auth
        )
        (root / "env").write_text(f"export AGENTS_REDIS_URL={server.url}\n")
        reported: set[str] = set()
        while True:
            time.sleep(0.5)
            for name, process in deployment.processes.items():
                if process.poll() is not None and name not in reported:
                    reported.add(name)
                    console.print(
                        f"[yellow]up: {name} exited with {process.returncode}; "
                        f"see {deployment.log_dir}/{name}.log[/]"
                    )
    except KeyboardInterrupt:
        console.print("up: stopping every tier (warm shutdown), then Redis ...")
        return 0
    finally:
        if deployment is not None:
            deployment.stop()
        server.stop()
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
        console.print("up: stopped")


def _print_ready(
    console: Console,
    deployment: LocalDeployment,
    server: EmbeddedRedis,
    options: UpOptions,
    flower_auth: str,
    gateway_line: str,
    *,
    shown: bool,
) -> None:
    table = Table(title="agents up")
    table.add_column("service")
    table.add_column("tier")
    table.add_column("pid", justify="right")
    table.add_column("log")
    for name, process in deployment.processes.items():
        service = deployment.services[name]
        table.add_row(name, service.tier, str(process.pid), str(deployment.log_dir / f"{name}.log"))
    console.print(table)
    user, _, password = flower_auth.partition(":")
    secret = password if shown else "<from AGENTS_FLOWER_BASIC_AUTH>"
    console.print(
        f"Flower:  http://127.0.0.1:{options.flower_port}/  (user {user}, password {secret})"
    )
    console.print(gateway_line, highlight=False, soft_wrap=True)
    if options.metrics_port is not None:
        console.print(f"Metrics: http://127.0.0.1:{options.metrics_port}/metrics (+1 per agent)")
    console.print("Use it from another shell:")
    console.print(f"  export AGENTS_REDIS_URL={server.url}", soft_wrap=True)
    console.print("  agents status    agents watch    agents job <id>", highlight=False)
    console.print(
        '  agents submit compute \'{"operation": "sum", "values": [1, 2]}\' --wait',
        highlight=False,
        markup=False,
    )
    console.print("[bold green]up: ready[/]; Ctrl-C stops everything", highlight=False)
