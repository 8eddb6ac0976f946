"""The SDK's ``TaskEventStream`` on Redis: a task's events are its job's log, mapped.

The tiers append every status change and progress event of a job to its log
(``joblog:{id}``, a Redis stream); :func:`follow` reads it from a cursor on, as it
grows, and maps each entry to A2A events (:func:`project.gateway.mapping.events_for`).
The request that runs a task follows it that way (:mod:`project.gateway.executor`), and
so does any replica asked to stream a task it does not run (:class:`JobLogStream`):
the version of each event is its log cursor, so a snapshot at one cursor and the
events after it fit together without a gap, whichever replica serves them.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Final

from a2a.server.cluster.event_stream import TaskEventStream, VersionedEvent
from a2a.server.cluster.version import TaskVersion
from a2a.types.a2a_pb2 import (
    Task,
    TaskArtifactUpdateEvent,
    TaskState,
    TaskStatusUpdateEvent,
)

from project.core.a2a.envelope import now_ms
from project.gateway.jobs import Jobs
from project.gateway.mapping import (
    INTERRUPTED_STATES,
    TERMINAL_STATES,
    JobEvent,
    events_for,
    refusal,
)
from project.gateway.versions import counter_of, cursor_of, pack

__all__ = ["WAIT_S", "JobLogStream", "follow"]

WAIT_S: Final = 1.0
"""Longest single wait for the next log event; between waits a follower checks that
there is still something to follow."""

A2AEvent = TaskStatusUpdateEvent | TaskArtifactUpdateEvent
Idle = Callable[[], Awaitable[list[A2AEvent] | None]]
"""Called when a wait ended with nothing new: the events that end the task when it will
not get any from the log (then following stops), or None to keep waiting."""


async def follow(
    jobs: Jobs,
    task_id: str,
    context_id: str,
    *,
    after: str | None,
    state: TaskState,
    on_idle: Idle,
    wait_s: float = WAIT_S,
) -> AsyncGenerator[tuple[JobEvent | None, A2AEvent], None]:
    """The task's A2A events from its job's log after the cursor ``after``, as they come.

    Yields ``(log event, A2A event)`` pairs until the task reaches a terminal state or
    asks for input (the log event is None for events ``on_idle`` made up).
    """
    cursor = after
    while True:
        batch = await jobs.wait_log(task_id, cursor, wait_s)
        for job_event in batch:
            cursor = job_event.id
            for event in events_for(task_id, context_id, job_event, state):
                if isinstance(event, TaskStatusUpdateEvent):
                    state = event.status.state
                yield job_event, event
            if state in TERMINAL_STATES or state in INTERRUPTED_STATES:
                return
        if not batch:
            ending = await on_idle()
            if ending is not None:
                for event in ending:
                    yield None, event
                return


class JobLogStream(TaskEventStream):
    """Task events for any replica, read from the jobs' logs (see the module docstring).

    ``publish`` has nothing to do: the tiers write the log, and a task's own writes
    that the log does not carry (a rejection before any job existed) end it at once, so
    no other replica waits for them.
    """

    def __init__(
        self,
        jobs: Jobs,
        peek: Callable[[str], Awaitable[Task | None]],
        *,
        wait_s: float = WAIT_S,
    ) -> None:
        self._jobs = jobs
        self._peek = peek
        self._wait_s = wait_s

    async def publish(self, task_id: str, event: VersionedEvent) -> None:
        """Nothing to do: the job log is the stream (see the class docstring)."""
        del task_id, event

    async def subscribe(
        self, task_id: str, *, after: TaskVersion
    ) -> AsyncGenerator[VersionedEvent, None]:
        """The task's events logged after the cursor of ``after``, until it ends or waits."""
        task = await self._peek(task_id)
        if task is None:
            return
        logged = cursor_of(after) is not None  # the job has a log: it was recorded

        async def on_idle() -> list[A2AEvent] | None:
            stored = await self._peek(task_id)
            if stored is None:
                return []  # expired: nothing more will come
            if stored.status.state in TERMINAL_STATES:
                # Ended without the log (canceled before its job was recorded, or a
                # submit that failed): that record is the last word.
                ending = TaskStatusUpdateEvent(
                    task_id=task_id, context_id=stored.context_id, status=stored.status
                )
                return [ending]
            if not logged and stored.status.state == TaskState.TASK_STATE_SUBMITTED:
                # No job log yet: perhaps a submit the coordinator refused, whose
                # replica died before it could write that down.
                refused = await self._jobs.intake_refusal(task_id)
                if refused is not None:
                    return [refusal(task_id, stored.context_id, refused, now_ms=now_ms())]
            return None

        async for job_event, event in follow(
            self._jobs,
            task_id,
            task.context_id,
            after=cursor_of(after),
            state=task.status.state,
            on_idle=on_idle,
            wait_s=self._wait_s,
        ):
            if job_event is not None:
                logged = True
                version = pack(job_event.id, 0)
            else:  # made up from the record: just after the snapshot it follows
                version = pack(cursor_of(after), counter_of(after) + 1)
            yield VersionedEvent(event=event, version=version)

    async def destroy(self, task_id: str) -> None:
        """Nothing to release: logs expire with their jobs."""
        del task_id
