"""A gateway replica as a real process (``python -m project gateway``), for the tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from project.local.embedded_redis import child_env, free_port


class GatewayProcess:
    """One ``agents gateway`` process on a free port; ``start`` waits for its health check."""

    def __init__(self, log_dir: Path, name: str, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = log_dir / f"{name}.log"
        self._env = child_env(**env)
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30) -> GatewayProcess:
        with self._log.open("ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "project", "gateway", "--port", str(self.port)],
                env=self._env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"the gateway exited: {self._log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the gateway did not start: {self._log.read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL: the replica dies mid-work, as a crashed host would."""
        if self._proc is not None and self._proc.poll() is None:
            os.kill(self._proc.pid, signal.SIGKILL)
            self._proc.wait(timeout=10)

    def stop(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=10)

    def log(self) -> str:
        return self._log.read_text(errors="replace")
