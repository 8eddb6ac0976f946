"""The checks of the coordinator's supervisor cycle (:mod:`.supervisor` runs them).

One cycle, under a short lease so that two beats never double-act:

1. Agents silent past ``heartbeat_timeout_s`` are marked dead (visibly, in the
   registry); one that heartbeats again is re-admitted by its heartbeat.
2. Every unfinished job assigned to a dead worker (or to one that deregistered
   while still holding jobs), queued or in flight, is sent
   back to the distributor with its current epoch; routing moves it to a new
   epoch on a live worker, so a late result from the dead one is ignored.
   The dead worker's private queue is drained.
3. Jobs still PENDING after ``stuck_job_after_s`` (a tier died before
   dispatching them) are sent again, and so are jobs still ASSIGNED after it to a
   live worker whose queue is empty: their work order was lost (a crash between
   recording and sending it). Re-sending is always safe: it opens a new epoch, so
   if the old order turns up after all, it is dropped as stale. Submit calls
   that never became a job record (the message was lost with a crashing Redis)
   are published again under the same id. A job IN_PROGRESS on a live worker
   that reports (with its heartbeat) that it is not running it lost its result
   on the way back and is re-sent too.
4. Coordinator and distributor messages left unacknowledged for longer than
   ``stuck_job_after_s`` belong to a process that died holding them (those tasks
   take milliseconds); they are put back on their queue now instead of after the
   broker's visibility timeout, which must stay longer than the longest job.

Steps 3 and 4 wait while Redis refuses writes and for ``stuck_job_after_s`` after
the last refusal any agent reported (its degraded mark): until then a job or a
message that looks stuck is most likely held by a task that waits for Redis to
take its write, and goes on by itself once it does.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from project.coordinator.intake import send_to_distributor
from project.coordinator.shared_view import sync_shared_state
from project.core.a2a.envelope import now_ms
from project.core.celery_app import app
from project.core.celery_app.broker_keys import broker_keys
from project.core.constants import (
    COORDINATOR_QUEUE,
    DISTRIBUTOR_QUEUE,
    KEY_RUNNING,
    KEY_STATS_HEALTH,
    KEY_STATS_JOBS,
    KEY_WORKER_JOBS,
    Tier,
    worker_queue,
)
from project.core.messages import DispatchReason, DispatchRequest
from project.core.models import JobRecord, JobStatus
from project.core.runtime import Runtime
from project.core.state.leases import LeaseManager
from project.core.submits import publish_submit

log = logging.getLogger("project.coordinator.health")

HEALTH_LEASE = "beat:health_check"
KEY_REROUTED = "reroute:"  # reroute:{job}:{epoch} -> set once per epoch, so beats don't pile up


@dataclass
class HealthReport:
    """What one health-check run did."""

    ran: bool = False
    newly_dead: list[str] = field(default_factory=list)
    rerouted: list[str] = field(default_factory=list)
    resent_stuck: list[str] = field(default_factory=list)
    escalated: list[str] = field(default_factory=list)
    input_timeouts: list[str] = field(default_factory=list)
    drained_messages: int = 0
    restored_messages: int = 0


def _request_for(record: JobRecord, reason: DispatchReason) -> DispatchRequest:
    deadline_ms = max(record.deadline_ms, now_ms() + 30_000)
    return DispatchRequest.for_record(record, reason, deadline_ms=deadline_ms)


def _send_once(rt: Runtime, record: JobRecord, reason: DispatchReason) -> bool:
    """Send a dispatch request for this epoch of the job unless one went out recently."""
    marker = f"{KEY_REROUTED}{record.id}:{record.epoch}"
    if not rt.redis.set(marker, reason, nx=True, ex=max(5, int(rt.settings.stuck_job_after_s))):
        return False
    send_to_distributor(rt, _request_for(record, reason))
    return True


def _workers_holding_jobs(rt: Runtime) -> set[str]:
    """Ids of workers that have unfinished jobs assigned (from their job sets)."""
    prefix = KEY_WORKER_JOBS
    return {key[len(prefix) :] for key in rt.redis.scan_iter(match=f"{prefix}*", count=1000)}


def _depth(rt: Runtime, queue: str, cache: dict[str, int]) -> int:
    """Messages waiting in a queue, every priority level (cached per run)."""
    if queue not in cache:
        pipe = rt.redis.pipeline(transaction=False)
        for name in broker_keys().priority_lists(queue):
            pipe.llen(name)
        cache[queue] = sum(int(n) for n in pipe.execute())
    return cache[queue]


def _queue_depth(rt: Runtime, worker_id: str, cache: dict[str, int]) -> int:
    """Messages waiting in a worker's private queue."""
    return _depth(rt, worker_queue(worker_id), cache)


def _not_running(rt: Runtime, record: JobRecord, cache: dict[str, set[str] | None]) -> bool:
    """True if the job's worker reported, in its last heartbeat, that it does not run it."""
    worker_id = record.assignee
    if worker_id not in cache:
        raw = rt.redis.get(KEY_RUNNING + worker_id)
        cache[worker_id] = set(json.loads(raw)) if raw else None
    reported = cache[worker_id]
    return reported is not None and record.id not in reported


def _idle(rt: Runtime, queue: str, cache: dict[str, int] | None = None) -> bool:
    """True if nothing waits in ``queue``: a job still missing then was lost, not queued."""
    return _depth(rt, queue, {} if cache is None else cache) == 0


def drain_worker_queue(rt: Runtime, worker_id: str) -> int:
    """Delete the messages waiting in a dead worker's queue (every priority level)."""
    names = broker_keys().priority_lists(worker_queue(worker_id))
    pipe = rt.redis.pipeline(transaction=True)
    for name in names:
        pipe.llen(name)
    for name in names:
        pipe.delete(name)
    results = pipe.execute()
    return sum(int(n) for n in results[: len(names)])


def restore_orphaned_tier_messages(rt: Runtime, older_than_s: float) -> int:
    """Requeue coordinator/distributor messages unacked for longer than ``older_than_s``.

    Uses kombu's own restore (the same code its visibility timeout runs), so the
    message goes back to its queue and priority exactly as kombu would put it.
    """
    ceiling = time.time() - older_than_s
    tags: list[str] = rt.redis.zrangebyscore(  # type: ignore[assignment]
        broker_keys().unacked_index, "-inf", ceiling, start=0, num=1000
    )
    if not tags:
        return 0
    raw = rt.redis.hmget(broker_keys().unacked, tags)
    orphans = []
    for tag, entry in zip(tags, raw, strict=True):
        if entry is None:
            continue
        try:
            routing_key = json.loads(entry)[2]
        except (ValueError, IndexError, TypeError):
            continue
        if routing_key in (COORDINATOR_QUEUE, DISTRIBUTOR_QUEUE):
            orphans.append(tag)
    if orphans:
        with app.connection_for_write() as connection:
            qos = connection.default_channel.qos
            for tag in orphans:
                qos.restore_by_tag(tag, leftmost=True)
        log.warning("restored orphaned tier messages", extra={"count": len(orphans)})
    return len(orphans)


@dataclass(frozen=True)
class Findings:
    """What one cycle's assessment found to do (see the module docstring)."""

    newly_dead: tuple[str, ...] = ()
    """Agents this cycle marked dead."""
    reroutes: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """Dead or departed workers, each with its unfinished job ids."""
    stuck: tuple[JobRecord, ...] = ()
    """Open jobs whose dispatch, work order or result was lost, as assessed."""
    intents: tuple[tuple[str, dict[str, Any]], ...] = ()
    """Submit calls that never became a job record, with their calls."""
    unserved_task_types: tuple[str, ...] = ()
    """Task types of open jobs that no live worker offers."""
    settling: bool = False
    """Redis refused writes within ``stuck_job_after_s``: nothing is judged stuck yet."""


def assess(rt: Runtime) -> Findings | None:
    """Take this interval's lease, mark silent agents dead, and find what to do.

    Returns None if another beat holds the lease (it does this interval's cycle).
    """
    leases = LeaseManager(rt.redis)
    ttl_ms = max(1000, int(rt.settings.health_check_interval_s * 1000 * 0.8))
    # The lease is not released at the end: it expires just before the next
    # interval, so a second beat firing later in the same interval does nothing.
    if leases.acquire(HEALTH_LEASE, ttl_ms) is None:
        rt.redis.hincrby(KEY_STATS_HEALTH, "skipped", 1)
        return None
    rt.redis.hincrby(KEY_STATS_HEALTH, "runs", 1)
    settings = rt.settings
    cards = rt.registry.cards()
    newly_dead = []
    for agent_id in rt.registry.silent_agents(settings.heartbeat_timeout_s):
        if rt.registry.mark_dead(agent_id):
            newly_dead.append(agent_id)
            log.warning("agent marked dead", extra={"agent_id": agent_id})
    dead = {a for a in rt.registry.dead_agents() if a in cards and cards[a].tier == Tier.WORKER}
    # A worker that deregistered (shut down) while still holding jobs left them too.
    gone = {w for w in _workers_holding_jobs(rt) if w not in cards}
    reroutes = tuple(
        (agent_id, tuple(sorted(rt.jobs.open_jobs_of(agent_id))))
        for agent_id in sorted(dead | gone)
    )
    stuck_before = now_ms() - int(settings.stuck_job_after_s * 1000)
    snapshot = rt.registry.snapshot()
    refused_ms = snapshot.last_write_refusal_ms()
    settling = (
        refused_ms is not None and snapshot.now_ms - refused_ms < settings.stuck_job_after_s * 1000
    )
    if settling:  # tasks waiting out refused writes go on by themselves: give them time
        log.info(
            "Redis refused writes lately: stuck-job checks wait",
            extra={"refused_s_ago": round((snapshot.now_ms - (refused_ms or 0)) / 1000, 1)},
        )
    queue_depths: dict[str, int] = {}
    running: dict[str, set[str] | None] = {}
    stuck = []
    unserved: set[str] = set()
    live_types = {
        t
        for c in cards.values()
        if c.tier == Tier.WORKER and c.id not in dead
        for t in c.task_types
    }
    untouched = [] if settling else rt.jobs.open_jobs_untouched_since(stuck_before)
    for job_id in untouched:
        record = rt.jobs.get(job_id)
        if record is None:
            continue
        if record.task_type not in live_types:
            unserved.add(record.task_type)
        lost_order = record.status is JobStatus.ASSIGNED and (
            _queue_depth(rt, record.assignee, queue_depths) == 0
        )
        unsent = record.status is JobStatus.PENDING and _idle(rt, DISTRIBUTOR_QUEUE, queue_depths)
        lost_result = (
            record.status is JobStatus.IN_PROGRESS
            and record.assignee not in dead
            and _not_running(rt, record, running)
            and _idle(rt, DISTRIBUTOR_QUEUE, queue_depths)
        )
        if unsent or lost_order or lost_result:
            stuck.append(record)
    # Only when the coordinator's queue is empty: a backlog may still hold them.
    idle = not settling and _idle(rt, COORDINATOR_QUEUE)
    intents = rt.jobs.unrecorded_intents(stuck_before) if idle else {}
    return Findings(
        newly_dead=tuple(newly_dead),
        reroutes=reroutes,
        stuck=tuple(stuck),
        intents=tuple(intents.items()),
        unserved_task_types=tuple(sorted(unserved)),
        settling=settling,
    )


def reroute(rt: Runtime, findings: Findings) -> tuple[list[str], int]:
    """Send the unfinished jobs of dead workers back to the distributor; drain their queues.

    Returns the re-routed job ids and how many queued messages were drained.
    """
    rerouted: list[str] = []
    drained = 0
    for agent_id, job_ids in findings.reroutes:
        for job_id in job_ids:
            record = rt.jobs.get(job_id)
            if (
                record is None
                or record.status.is_final
                or record.status is JobStatus.INPUT_REQUIRED
                or record.assignee != agent_id
            ):
                continue
            if _send_once(rt, record, DispatchReason.REROUTE):
                rerouted.append(job_id)
        drained += drain_worker_queue(rt, agent_id)
    return rerouted, drained


def resend(rt: Runtime, findings: Findings) -> tuple[list[str], int]:
    """Re-send stuck jobs and lost submits; put orphaned tier messages back on their queues.

    Returns the re-sent job ids and how many orphaned messages were restored.
    """
    resent: list[str] = []
    for record in findings.stuck:
        if _send_once(rt, record, DispatchReason.STUCK):
            resent.append(record.id)
    for job_id, call in findings.intents:
        publish_submit(app, job_id, call)
        resent.append(job_id)
    if findings.settling:  # their tasks may be waiting for Redis to take a write
        return resent, 0
    return resent, restore_orphaned_tier_messages(rt, rt.settings.stuck_job_after_s)


def escalate(rt: Runtime, findings: Findings) -> list[str]:
    """Raise what the cycle cannot fix by itself: open jobs no live worker can take.

    Logged at ERROR and counted; the jobs keep their deadlines (the distributor
    fails them with NoEligibleWorkerError when those pass).
    """
    if findings.unserved_task_types:
        rt.redis.hincrby(KEY_STATS_HEALTH, "escalations", 1)
        log.error(
            "open jobs wait for task types no live worker offers",
            extra={"task_types": list(findings.unserved_task_types)},
        )
    return list(findings.unserved_task_types)


def report(rt: Runtime, done: HealthReport) -> None:
    """Sync the distributors' shared state, count and log what the cycle did."""
    if not done.ran:
        return
    sync_shared_state(rt)
    if done.rerouted or done.resent_stuck:
        pipe = rt.redis.pipeline(transaction=False)
        pipe.hincrby(KEY_STATS_JOBS, "rerouted", len(done.rerouted))
        pipe.hincrby(KEY_STATS_JOBS, "resent_stuck", len(done.resent_stuck))
        pipe.execute()
        log.warning(
            "re-dispatched jobs",
            extra={"rerouted": len(done.rerouted), "stuck": len(done.resent_stuck)},
        )
