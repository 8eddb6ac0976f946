"""An agent with a skewed wall clock, for ``make chaos``: libfaketime and its sleep shim.

The same mechanism as ``tests/integration/test_clock_skew.py`` (tools never import
tests): the process runs with ``LD_PRELOAD=libfaketime.so.1``, ``FAKETIME`` set to its
offset and ``FAKETIME_DONT_FAKE_MONOTONIC=1`` (a faked monotonic clock hangs lock
timeouts), and a ``sitecustomize`` on its ``PYTHONPATH`` that mends the ``time.sleep``
libfaketime 0.9.10 breaks in that mode (fixed in 0.9.11: wolfcw/libfaketime#426).
The shim is written into the run's folder (:func:`write_shim`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

SHIM_SOURCE = '''"""``time.sleep`` that works under libfaketime 0.9.10 (from tools.chaos.skew)."""

import threading
import time


def _sleep_works():
    try:
        time.sleep(0.001)
    except OSError:
        return False
    return True


def _sleep_on_a_lock(seconds):
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    lock = threading.Lock()
    lock.acquire()
    lock.acquire(timeout=min(seconds, threading.TIMEOUT_MAX))


if not _sleep_works():
    time.sleep = _sleep_on_a_lock
'''

_PROBE = """
import json, time
started = time.monotonic()
time.sleep(0.2)
print(json.dumps({"wall_ms": time.time_ns() // 1_000_000,
                  "slept_s": time.monotonic() - started}))
"""


def find_libfaketime() -> Path | None:
    """libfaketime.so.1 where Debian and the usual prefixes put it, or None."""
    multiarch = sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu"
    for folder in (
        f"/usr/lib/{multiarch}/faketime",
        "/usr/lib/faketime",
        "/usr/local/lib/faketime",
        "/usr/lib64/faketime",
    ):
        candidate = Path(folder) / "libfaketime.so.1"
        if candidate.is_file():
            return candidate
    return None


def write_shim(folder: Path) -> Path:
    """Write the sleep shim (``sitecustomize.py``) into ``folder``; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(SHIM_SOURCE)
    return folder


def skewed_env(
    library: Path, offset_s: int, shim: Path, pythonpath: str | None = None
) -> dict[str, str]:
    """The environment that runs a Python process with its wall clock ``offset_s`` off."""
    return {
        "LD_PRELOAD": str(library),
        "FAKETIME": f"{offset_s:+d}s",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(shim), pythonpath])),
    }


def probe(library: Path, offset_s: int, shim: Path) -> str | None:
    """None if a Python under ``library`` sees its wall clock shifted and sleeps; else why not."""
    env = {**os.environ, **skewed_env(library, offset_s, shim, os.environ.get("PYTHONPATH"))}
    before = time.time_ns() // 1_000_000
    try:
        run = subprocess.run(
            [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"a Python process under {library} did not run: {error!r}"
    if run.returncode != 0:
        return f"a Python process under {library} fails: {run.stderr.strip()[-300:]}"
    seen = json.loads(run.stdout)
    shift_ms = seen["wall_ms"] - before
    wanted_ms = offset_s * 1000
    if not wanted_ms - 1_000 <= shift_ms <= wanted_ms + 10_000:
        return f"{library} did not shift Python's wall clock by {wanted_ms} ms: {shift_ms}"
    if not 0.19 <= seen["slept_s"] < 2.0:
        return f"time.sleep under {library} slept {seen['slept_s']:.3f}s for 0.2s"
    return None


__all__ = ["find_libfaketime", "probe", "skewed_env", "write_shim"]
