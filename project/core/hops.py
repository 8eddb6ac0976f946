"""What every hop of a job shares: its name, its timing, and how a refusal is counted.

A hop is one tier's handling of one message: ``submit`` (coordinator), ``assign``
and ``complete`` (distributor), ``execute`` (worker). Each is one plain, typed
function in its tier; this module only times it and counts what it refuses.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum

from project.core import metrics
from project.core.a2a.envelope import Envelope, now_ms
from project.core.constants import KEY_STATS_JOBS
from project.core.errors import A2AError, DeadlineExceededError, LapsedEnvelopeError
from project.core.models import JobRecord
from project.core.runtime import Runtime

log = logging.getLogger("project.hops")


class Hop(StrEnum):
    """The four hops of a job, in order, and a resume's first; the value is ``<tier>.<task>``."""

    SUBMIT = "coordinator.submit"
    ASSIGN = "distributor.assign"
    EXECUTE = "worker.execute"
    COMPLETE = "distributor.complete"
    RESUME = "coordinator.resume"


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


def lapsed_envelope(lapsed: LapsedEnvelopeError) -> Envelope:
    """The verified envelope a LapsedEnvelopeError carries (re-raised if it has none)."""
    if lapsed.envelope is None:
        raise lapsed
    return lapsed.envelope


def readmit(
    rt: Runtime, lapsed: LapsedEnvelopeError, *, job_id: str, epoch: int, worker_id: str = ""
) -> tuple[Envelope, JobRecord]:
    """Act on an authentic envelope that expired, if it is the message its job waits for.

    An envelope that expired in our own queues (behind a backlog longer than
    ``AGENTS_ENVELOPE_TTL_S``) is the system's doing, not the job's: if the job's
    record is unfinished and at the envelope's ``epoch`` (and with ``worker_id`` as
    its assignee, when given), the hop goes on, and whatever it sends next is signed
    afresh. It counts as no failed attempt. Anything else, a copy of an old message
    above all, stays refused.

    Raises:
        LapsedEnvelopeError: the job moved on, is final, or does not exist.
    """
    envelope = lapsed_envelope(lapsed)
    record = rt.jobs.get(job_id)
    if (
        record is None
        or record.status.is_final
        or record.epoch != epoch
        or (worker_id and record.assignee != worker_id)
    ):
        raise lapsed
    rt.redis.hincrby(KEY_STATS_JOBS, "expired_in_queue", 1)
    metrics.count_readmitted()
    log.warning(
        "envelope expired in a queue; its job is still waiting for it, so it goes on",
        extra={"job_id": job_id, "epoch": epoch},
    )
    return envelope, record


def deadline_exceeded(record: JobRecord) -> DeadlineExceededError | None:
    """The error for a job past the deadline its submitter set, or None."""
    if record.deadline_s is None or now_ms() <= record.deadline_ms:
        return None
    return DeadlineExceededError(
        f"job {record.id} outlived the deadline its submitter set (deadline_s="
        f"{record.deadline_s:g}, {now_ms() - record.deadline_ms} ms ago) while it waited "
        "in a queue"
    )
