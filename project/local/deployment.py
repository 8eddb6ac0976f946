"""Run the deployment's processes locally: start, wait until ready, kill, stop.

Each service runs in a session (and process group) of its own, holding the Celery
main process and its pool children. Signals go to the whole group, and stopping or
killing a service returns only once every process of its group has exited.
"""

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

import psutil

from project.core.metrics import MULTIPROC_ENV
from project.core.state.connections import connect_redis
from project.core.state.registry import AgentRegistry
from project.local.topology import Service

_AGENT_TIERS = ("coordinator", "distributor", "worker")
_POLL_S = 0.05
_KILL_TIMEOUT_S = 10.0  # how long a process group may take to vanish after SIGKILL


def _live_members(pgid: int) -> list[int]:
    """Pids of the processes of group ``pgid`` that have not exited (zombies excluded)."""
    members: list[int] = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                members.append(process.pid)
    return members


def _group_running(process: subprocess.Popen[bytes]) -> bool:
    """True while some process of the group ``process`` leads has not exited.

    ``killpg(pgid, 0)`` also finds zombies: pool children that have exited but are not
    reaped yet (their parent, the group leader, is gone, and init reaps orphans when it
    gets to it). They have exited, so they do not count. Once the leader is reaped the
    group lives on only in such orphans; when they are gone too, the group id may be
    recycled, and then a live process with the leader's pid is someone else's.
    """
    if process.poll() is None:  # also reaps the leader, so it is no zombie of ours
        return True
    if psutil.pid_exists(process.pid):
        return False
    try:
        os.killpg(process.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return bool(_live_members(process.pid))


def _wait_group_exited(process: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """Wait until every process of the group ``process`` leads has exited; False on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        if not _group_running(process):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_S)


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
        if service.command[:2] == ("python", "-m"):
            argv = [sys.executable, *service.command[1:]]
        else:
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
        if _group_running(process):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)

    def kill(self, name: str) -> None:
        """SIGKILL a service and its children, with no goodbye; return once all are gone.

        Raises:
            TimeoutError: some process of the service survived SIGKILL.
        """
        self.signal(name, signal.SIGKILL)
        if not _wait_group_exited(self.processes[name], _KILL_TIMEOUT_S):
            raise TimeoutError(self._survivors_message([name]))

    def stop(self, names: Iterable[str] | None = None, timeout_s: float = 20.0) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL whatever is left after ``timeout_s``.

        Returns only when every process of every stopped service has exited: the
        Celery main process and its pool children, which share its process group.

        Raises:
            TimeoutError: some process survived SIGKILL (the message names them).
        """
        targets = list(names) if names is not None else list(self.processes)
        for name in targets:
            # The whole group: pool children may outlive their main process.
            self.signal(name, signal.SIGCONT)
            self.signal(name, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        survivors: list[str] = []
        try:
            for name in targets:
                process = self.processes[name]
                if _wait_group_exited(process, max(0.0, deadline - time.monotonic())):
                    continue
                self.signal(name, signal.SIGKILL)
                if not _wait_group_exited(process, _KILL_TIMEOUT_S):
                    survivors.append(name)
        finally:
            for name in targets:
                log = self._logs.pop(name, None)
                if log:
                    log.close()
        if survivors:
            raise TimeoutError(self._survivors_message(survivors))

    def _survivors_message(self, names: list[str]) -> str:
        found = {name: _live_members(self.processes[name].pid) for name in names}
        return f"processes survived SIGKILL: {found}; logs in {self.log_dir}"

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
            snapshot = registry.snapshot()
            cards, dead = snapshot.cards, snapshot.dead
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
        try:
            return self.start()
        except BaseException:
            self.stop()  # the services that did start
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
