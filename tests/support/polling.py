"""The one polling helper of the suite: wait for an observable state, never sleep-and-hope."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(
    check: Callable[[], bool], timeout_s: float, what: str, *, every_s: float = 0.05
) -> float:
    """Poll ``check`` until it returns true; return the seconds it took.

    Raises:
        AssertionError: ``check`` stayed false for ``timeout_s`` (the message names ``what``).
    """
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(every_s)
    return time.monotonic() - started
