"""What every hop of a job shares: its name, its timing, and how a refusal is counted.

A hop is one tier's handling of one message: ``submit`` (coordinator), ``assign``
and ``complete`` (distributor), ``execute`` (worker). Each is one plain, typed
function in its tier; this module only times it and counts what it refuses.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum

from project.core import metrics
from project.core.errors import A2AError
from project.core.runtime import Runtime


class Hop(StrEnum):
    """The four hops of a job, in order; the value is ``<tier>.<task>``."""

    SUBMIT = "coordinator.submit"
    ASSIGN = "distributor.assign"
    EXECUTE = "worker.execute"
    COMPLETE = "distributor.complete"


@contextmanager
def timed_hop(rt: Runtime, hop: Hop, task_name: str) -> Iterator[None]:
    """Time one hop; a refused envelope is counted and logged, then re-raised (it never runs)."""
    started, outcome = time.perf_counter(), "error"
    try:
        yield
        outcome = "ok"
    except A2AError as error:
        rt.count_refusal(error, task_name)
        raise
    finally:
        metrics.observe_hop(hop.value, time.perf_counter() - started, outcome)
