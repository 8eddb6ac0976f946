"""Run the deployment's processes locally: start, wait until ready, kill, stop."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from project.core.metrics import MULTIPROC_ENV
from project.core.redis_store import connect_redis
from project.core.registry import AgentRegistry
from project.ops.topology import Service

_AGENT_TIERS = ("coordinator", "distributor", "worker")


class LocalDeployment:
    """A set of :class:`Service` processes sharing one environment and log folder."""

    def __init__(
        self,
        services: Iterable[Service],
        *,
        env: dict[str, str],
        log_dir: Path,
        workdir: Path | None = None,
    ) -> None:
        self.services = {s.name: s for s in services}
        self.env = env
        self.log_dir = Path(log_dir)
        self.workdir = workdir or self.log_dir
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: dict[str, IO[bytes]] = {}

    def add(self, service: Service) -> None:
        """Add a service (not started)."""
        self.services[service.name] = service

    def start(self, names: Iterable[str] | None = None) -> LocalDeployment:
        """Start the named services (default: all not yet running)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for name in list(names) if names is not None else list(self.services):
            running = self.processes.get(name)
            if running is None or running.poll() is not None:
                self._spawn(self.services[name])
        return self

    def metrics_dir(self, name: str) -> Path:
        """The service's own ``PROMETHEUS_MULTIPROC_DIR`` (see :mod:`project.core.metrics`)."""
        return self.log_dir / "metrics" / name

    def _metrics_env(self, service: Service, env: dict[str, str]) -> None:
        # One multiprocess folder per service, as in compose; a base AGENTS_METRICS_PORT
        # becomes port + n for the n-th agent service so local endpoints do not collide.
        if MULTIPROC_ENV not in service.env:
            env[MULTIPROC_ENV] = str(self.metrics_dir(service.name))
            self.metrics_dir(service.name).mkdir(parents=True, exist_ok=True)
        base = env.get("AGENTS_METRICS_PORT")
        if base and "AGENTS_METRICS_PORT" not in service.env:
            agents = [s.name for s in self.services.values() if s.tier in _AGENT_TIERS]
            if service.name in agents:
                env["AGENTS_METRICS_PORT"] = str(int(base) + agents.index(service.name))
            else:
                env.pop("AGENTS_METRICS_PORT")

    def _spawn(self, service: Service) -> None:
        env = {**self.env, **service.env}
        self._metrics_env(service, env)
        argv = [sys.executable, "-m", *service.command]
        if service.tier == "beat":
            argv += ["-s", str(self.workdir / f"{service.name}-schedule"), "--pidfile="]
        log = open(self.log_dir / f"{service.name}.log", "ab")  # noqa: SIM115 - closed in stop()
        self._logs[service.name] = log
        self.processes[service.name] = subprocess.Popen(
            argv,
            env=env,
            cwd=self.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def signal(self, name: str, sig: signal.Signals) -> None:
        """Send ``sig`` to a service's whole process group (its pool children too)."""
        process = self.processes[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)

    def kill(self, name: str) -> None:
        """SIGKILL a service and its children, with no goodbye."""
        self.signal(name, signal.SIGKILL)
        self.processes[name].wait(timeout=10)

    def stop(self, names: Iterable[str] | None = None, timeout_s: float = 20.0) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL whatever is left."""
        targets = list(names) if names is not None else list(self.processes)
        for name in targets:
            if self.processes[name].poll() is None:
                self.signal(name, signal.SIGCONT)
                self.signal(name, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for name in targets:
            process = self.processes[name]
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.signal(name, signal.SIGKILL)
                process.wait(timeout=10)
            finally:
                # Reap pool children left behind in the group.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
        for name in targets:
            log = self._logs.pop(name, None)
            if log:
                log.close()

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Wait until every coordinator, distributor and worker has registered and beats.

        Raises:
            TimeoutError: some agent did not come up (its log says why).
        """
        registry = AgentRegistry(connect_redis(self.env["AGENTS_REDIS_URL"]))
        host = socket.gethostname()
        wanted = set()
        for service in self.services.values():
            if service.name not in self.processes:
                continue
            if service.tier == "worker":
                wanted.add(service.name)
            elif service.tier in ("coordinator", "distributor"):
                wanted.add(f"{service.name}@{host}")
        deadline = time.monotonic() + timeout_s
        while True:
            cards, _beats, dead = registry.snapshot()
            missing = sorted(w for w in wanted if w not in cards or w in dead)
            if not missing:
                return
            for name, process in self.processes.items():
                if process.poll() is not None and self.services[name].tier != "beat":
                    raise TimeoutError(
                        f"{name} exited with {process.returncode}; see {self.log_dir}/{name}.log"
                    )
            if time.monotonic() > deadline:
                raise TimeoutError(f"agents not ready: {missing}; logs in {self.log_dir}")
            time.sleep(0.1)

    def __enter__(self) -> LocalDeployment:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
