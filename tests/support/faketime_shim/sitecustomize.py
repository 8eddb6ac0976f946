"""``time.sleep`` that works under libfaketime 0.9.10 (imported as ``sitecustomize``).

Only the processes tests run with a faked wall clock get this folder on PYTHONPATH.
They fake the wall clock alone (``FAKETIME_DONT_FAKE_MONOTONIC=1``), but libfaketime
up to 0.9.10 (Debian 12's) still shifts the absolute CLOCK_MONOTONIC deadline that
Python's ``time.sleep`` passes to ``clock_nanosleep``, which then fails with EINVAL
(fixed in 0.9.11: wolfcw/libfaketime#426). Lock timeouts are left alone (they wait on
the real monotonic clock), so where ``time.sleep`` is broken, it sleeps on one of those.
"""

from __future__ import annotations

import threading
import time


def _sleep_works() -> bool:
    try:
        time.sleep(0.001)
    except OSError:
        return False
    return True


def _sleep_on_a_lock(seconds: float) -> None:
    """Like ``time.sleep``: block for ``seconds`` of real (monotonic) time."""
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    lock = threading.Lock()
    lock.acquire()
    lock.acquire(timeout=min(seconds, threading.TIMEOUT_MAX))


if not _sleep_works():
    time.sleep = _sleep_on_a_lock  # type: ignore[assignment]
