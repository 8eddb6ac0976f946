"""The coordinator's live view: how many jobs are in each status, agents in each state.

Kept current from the announcements on ``events:jobs`` and ``events:agents``
(:mod:`project.core.state.notifications`). After every (re)subscription the view reads
the whole state from Redis in one Lua script, which also publishes a marker on
the view's own sync channel. A connection delivers messages in the order Redis
published them, so every announcement that arrives before the marker is already
in what the script read and is skipped, and every one after it is applied: the
view never counts a change twice or misses one, even across a Redis restart.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

from redis import Redis

from project.core.a2a.envelope import MessageType, verify
from project.core.celery_app.bootsteps import AgentHooks
from project.core.constants import (
    CHANNEL_AGENTS,
    CHANNEL_JOBS,
    CHANNEL_SYNC,
    COORDINATOR,
    KEY_AGENT_CARDS,
    KEY_AGENT_DEAD,
    KEY_JOB,
    KEY_JOBS_COUNT,
    KEY_JOBS_OPEN,
)
from project.core.errors import A2AError, MalformedEnvelopeError, MisdirectedEnvelopeError
from project.core.messages import JobEvent
from project.core.models import FINAL_STATUSES, AgentCard, JobStatus
from project.core.runtime import Runtime
from project.core.state.lua import load_script
from project.core.state.notifications import Subscriber

log = logging.getLogger("project.coordinator.view")

VIEW_TASK_NAME = "project.coordinator.view"
"""Where refusals of announced EVENTs are counted (the view is no Celery task)."""

ALIVE = "alive"
DEAD = "dead"
_AGENT_STATE = {"registered": ALIVE, "readmitted": ALIVE, "dead": DEAD}
_STATUSES = frozenset(s.value for s in JobStatus)
_FINAL = frozenset(s.value for s in FINAL_STATUSES)
_UNSIGNED_FINAL = frozenset({JobStatus.CANCELED.value, JobStatus.FAILED.value})
"""Final statuses a job may reach without a worker's signed EVENT (a cancel, an input
timeout): the view checks those against the job's record instead."""


EventCheck = Callable[[str, str, object], bool]
"""``(job_id, final status, the announced EVENT)`` -> whether to believe the announcement."""


def genuine_event_check(rt: Runtime) -> EventCheck:
    """A check that believes a final announcement only with a valid signed EVENT.

    The EVENT must verify (signature, key, expiry), be addressed to the coordinator,
    and name the announced job and status. Anything else is refused: counted like
    every refused envelope, logged, and left out of the view.
    """

    def check(job_id: str, status: str, raw: object) -> bool:
        try:
            if (
                not raw
                and status in _UNSIGNED_FINAL
                and rt.redis.hget(KEY_JOB + job_id, "status") == status
            ):
                # Ended outside the tiers' hops (cancel_job in an app, an input timeout):
                # believed because the job's record says so.
                return True
            if not isinstance(raw, str) or not raw:
                raise MalformedEnvelopeError("final job announcement without a signed EVENT")
            try:
                wire = json.loads(raw)
            except ValueError:
                raise MalformedEnvelopeError("announced EVENT is not JSON") from None
            envelope = verify(
                wire,
                rt.keyring,
                max_bytes=rt.settings.max_payload_bytes,
                skew_ms=int(rt.settings.envelope_clock_skew_s * 1000),
            )
            if envelope.type is not MessageType.EVENT or envelope.recipient != COORDINATOR:
                raise MisdirectedEnvelopeError(
                    f"coordinator expected an EVENT, got a {envelope.type.value} "
                    f"for {envelope.recipient!r}"
                )
            event = JobEvent.from_payload(envelope.payload)
            if event.job_id != job_id or event.status.value != status:
                raise MalformedEnvelopeError("EVENT does not match the job it announces")
        except A2AError as error:
            rt.count_refusal(error, VIEW_TASK_NAME)
            return False
        return True

    return check


def _pairs(flat: list[str]) -> list[tuple[str, str]]:
    return list(zip(flat[::2], flat[1::2], strict=True))


class CoordinatorView:
    """Current counts of jobs by status and agents by state, from pub/sub.

    Args:
        redis: client used to read the full state after each (re)subscription.
        url: Redis URL for the view's own subscriber connection.
    """

    def __init__(
        self, redis: Redis, url: str, event_is_genuine: EventCheck = lambda *_: True
    ) -> None:
        self._event_is_genuine = event_is_genuine
        self._read_state = redis.register_script(load_script("view_read_state"))
        self.view_id = uuid.uuid4().hex
        self._sync_channel = f"{CHANNEL_SYNC}{self.view_id}"
        self._lock = threading.Lock()
        self._open: dict[str, str] = {}
        self._finished: Counter[str] = Counter()
        self._agents: dict[str, str] = {}
        self._awaited_marker: str | None = None
        self._synced = threading.Event()
        self.resyncs = 0
        """How many times the view re-read the whole state (once per subscription)."""
        self._subscriber = Subscriber(
            url,
            [CHANNEL_JOBS, CHANNEL_AGENTS, self._sync_channel],
            self._on_message,
            on_subscribed=self._resync,
            name="coordinator-view",
        )

    def start(self) -> CoordinatorView:
        """Start following the channels."""
        self._subscriber.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop following the channels."""
        self._subscriber.stop(timeout_s)

    @property
    def current(self) -> bool:
        """True while subscribed and holding a full read of the state."""
        return self._synced.is_set() and self._subscriber.subscribed

    def wait_synced(self, timeout_s: float) -> bool:
        """Wait until the view holds a full read of the state; False on timeout."""
        return self._synced.wait(timeout_s)

    def jobs_by_status(self) -> dict[str, int]:
        """Unfinished jobs by current status, plus every job that reached a final status."""
        with self._lock:
            counts = Counter(self._open.values()) + self._finished
        return dict(sorted(counts.items()))

    def agents_by_state(self) -> dict[str, int]:
        """Registered agents by state: ``alive`` or ``dead`` (marked by the health check)."""
        with self._lock:
            return dict(sorted(Counter(self._agents.values()).items()))

    def agent_states(self) -> dict[str, str]:
        """State of each registered agent."""
        with self._lock:
            return dict(self._agents)

    def summary(self) -> dict[str, dict[str, int]]:
        """Both counts, as JSON."""
        return {"jobs": self.jobs_by_status(), "agents": self.agents_by_state()}

    def _resync(self) -> None:
        marker = uuid.uuid4().hex
        keys = [KEY_JOBS_OPEN, KEY_JOBS_COUNT, KEY_AGENT_CARDS, KEY_AGENT_DEAD]
        args = [KEY_JOB, self._sync_channel, json.dumps({"marker": marker})]
        jobs, counts, agents, dead = self._read_state(keys=keys, args=args)
        dead_agents = set(dead)
        with self._lock:
            self._synced.clear()
            self._awaited_marker = marker
            self._open = dict(_pairs(jobs))
            self._finished = Counter(
                {status: int(n) for status, n in _pairs(counts) if status in _FINAL}
            )
            self._agents = {a: DEAD if a in dead_agents else ALIVE for a in agents}

    def _on_message(self, channel: str, message: dict[str, Any]) -> None:
        with self._lock:
            if channel == self._sync_channel:
                if message.get("marker") == self._awaited_marker:
                    self._awaited_marker = None
                    self.resyncs += 1
                    self._synced.set()
                return
            if self._awaited_marker is not None:
                return  # published before the full read, so already counted in it
            if channel == CHANNEL_JOBS:
                self._apply_job(message)
            elif channel == CHANNEL_AGENTS:
                self._apply_agent(message)

    def _apply_job(self, message: dict[str, Any]) -> None:
        job_id, status = message.get("job_id"), message.get("status")
        if not isinstance(job_id, str) or status not in _STATUSES:
            return
        if status in _FINAL:
            if not self._event_is_genuine(job_id, str(status), message.get("event")):
                return
            if self._open.pop(job_id, None) is None:
                return  # not open in this view: a replayed announcement, counted already
            self._finished[str(status)] += 1
        else:
            self._open[job_id] = str(status)

    def _apply_agent(self, message: dict[str, Any]) -> None:
        agent_id, event = message.get("agent_id"), message.get("event")
        if not isinstance(agent_id, str):
            return
        if event == "deregistered":
            self._agents.pop(agent_id, None)
        elif event in _AGENT_STATE:
            self._agents[agent_id] = _AGENT_STATE[str(event)]


class CoordinatorViewHooks(AgentHooks):
    """Runs a :class:`CoordinatorView` in the coordinator's main process.

    Its counts are copied into the coordinator's local state (``metadata["view"]``)
    on every heartbeat, so they reach the coordinator's snapshot in Redis.
    """

    def __init__(self) -> None:
        self.view: CoordinatorView | None = None

    def after_start(self, runtime: Runtime, card: AgentCard) -> None:
        """Start the view."""
        self.view = CoordinatorView(
            runtime.redis, runtime.settings.redis_url, genuine_event_check(runtime)
        ).start()

    def on_heartbeat(self, runtime: Runtime, card: AgentCard) -> None:
        """Copy the current counts into the local state."""
        if self.view is not None and self.view.current:
            runtime.local_state.metadata["view"] = self.view.summary()  # type: ignore[assignment]

    def before_stop(self, runtime: Runtime, card: AgentCard) -> None:
        """Stop the view."""
        if self.view is not None:
            self.view.stop()
            self.view = None
