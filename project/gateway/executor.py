"""The SDK's ``AgentExecutor`` for our jobs: a message starts or resumes a job, and the
request follows the job's log until the task ends or asks for input.

A new message is checked first (its skill is on offer, it has a payload), becomes a
submitted task, then a job under the task's id, submitted for the caller; a message to
a task waiting for input has answered it already (``resume_job``, in the request
handler, before the SDK starts the request). Either way the request then follows the
job's log (:func:`project.gateway.events.follow`), turning each event into
A2A events for the SDK, which writes the task and answers the client. Cancel cancels the
job (``cancel_job``). Nothing here outlives the request: another replica can take the
task up from Redis at any point.
"""

from __future__ import annotations

import logging
import time
from typing import Final

from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events.event_queue import EventQueue
from a2a.types.a2a_pb2 import (
    Message,
    Task,
    TaskState,
    TaskStatus,
    TaskStatusUpdateEvent,
)
from a2a.utils._async_queue_compat import QueueShutDown
from a2a.utils.errors import InvalidParamsError

from project.core.a2a.envelope import now_ms
from project.core.errors import JobNotFoundError
from project.core.models import Skill
from project.gateway.events import A2AEvent, follow
from project.gateway.jobs import Jobs
from project.gateway.mapping import (
    INTERRUPTED_STATES,
    SKILL_KEY,
    TERMINAL_STATES,
    InvalidMessageError,
    cursor_of_task,
    message_json,
    payload_of,
    refusal,
    rejection,
    skill_of,
)
from project.gateway.store import caller_of

__all__ = ["SKILLS_CACHE_S", "JobExecutor", "SkillCatalog"]

log = logging.getLogger("project.gateway")

SKILLS_CACHE_S: Final = 2.0
"""How long the skills on offer are reused before the registry is read again."""


class SkillCatalog:
    """The skills live workers offer now, read from the registry at most every few seconds."""

    def __init__(self, jobs: Jobs, ttl_s: float = SKILLS_CACHE_S) -> None:
        self._jobs = jobs
        self._ttl_s = ttl_s
        self._skills: list[Skill] = []
        self._read_at = float("-inf")

    async def get(self, *, fresh: bool = False) -> list[Skill]:
        """The skills on offer, sorted by id."""
        if fresh or time.monotonic() - self._read_at > self._ttl_s:
            self._skills = sorted(await self._jobs.offered_skills(), key=lambda s: s.id)
            self._read_at = time.monotonic()
        return self._skills


class JobExecutor(AgentExecutor):
    """Runs A2A requests as jobs (see the module docstring)."""

    def __init__(self, jobs: Jobs, skills: SkillCatalog, *, default_skill: str | None) -> None:
        self._jobs = jobs
        self._skills = skills
        self._default_skill = default_skill
        self._answered: dict[str, tuple[str | None, TaskState]] = {}

    def answered(self, task_id: str, cursor: str | None) -> None:
        """The request handler resumed ``task_id``'s job (the log was at ``cursor``): the
        request it starts next follows the log from there."""
        self._answered[task_id] = (cursor, TaskState.TASK_STATE_INPUT_REQUIRED)

    def forget(self, task_id: str) -> None:
        """The request that answered ``task_id`` is over (see :meth:`answered`)."""
        self._answered.pop(task_id, None)

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        """Start the task's job, or take up the job an answer resumed; then pass on its
        events until it ends or waits.

        Once the job exists nothing is raised (the SDK would end the task as failed
        while the job carries on): an error is logged and ends the request, and the
        task goes on from the job's log.
        """
        task_id, context_id, message = context.task_id, context.context_id, context.message
        if task_id is None or context_id is None or message is None:
            raise InvalidParamsError(message="a message is required")
        current = context.current_task
        first: Task | None = None
        answered: tuple[str | None, TaskState] | None = None
        if current is None:
            first = await self._start(context, task_id, context_id, message, event_queue)
            if first is None:
                return
            after, state = None, TaskState.TASK_STATE_SUBMITTED
        else:
            answered = self._answered.pop(task_id, None)
            if answered is None:  # not from our request handler: go on from the task as stored
                after, state = cursor_of_task(current), current.status.state
            else:
                after, state = answered
        try:
            if first is not None:
                await event_queue.enqueue_event(first)
            if state in TERMINAL_STATES or (answered is None and state in INTERRUPTED_STATES):
                return
            await self._follow(task_id, context_id, after, state, event_queue)
        except QueueShutDown:
            log.debug("the request ended before its job", extra={"task_id": task_id})
        except Exception:
            log.exception(
                "lost track of a job: the request ends, the task goes on from its log",
                extra={"task_id": task_id},
            )

    async def _follow(
        self,
        task_id: str,
        context_id: str,
        after: str | None,
        state: TaskState,
        event_queue: EventQueue,
    ) -> None:
        """Pass on the job's A2A events until the task ends or waits."""
        logged = after is not None

        async def on_idle() -> list[A2AEvent] | None:
            if logged:
                return None  # a recorded job: its log will tell
            refused = await self._jobs.intake_refusal(task_id)
            if refused is None:
                return None
            return [refusal(task_id, context_id, refused, now_ms=now_ms())]

        async for job_event, event in follow(
            self._jobs, task_id, context_id, after=after, state=state, on_idle=on_idle
        ):
            logged = logged or job_event is not None
            await event_queue.enqueue_event(event)

    async def _start(
        self,
        context: RequestContext,
        task_id: str,
        context_id: str,
        message: Message,
        event_queue: EventQueue,
    ) -> Task | None:
        """Submit the message's job and return its first task (for the caller to pass on);
        None if the message was rejected instead (already answered)."""
        task = Task(
            id=task_id,
            context_id=context_id,
            status=TaskStatus(state=TaskState.TASK_STATE_SUBMITTED),
            history=[message],
        )
        task.status.timestamp.FromMilliseconds(now_ms())
        try:
            skill = skill_of(message, self._default_skill)
            payload = payload_of(message)
        except InvalidMessageError as e:
            await self._reject(task, str(e), event_queue)
            return None
        offered = await self._skills.get()
        ids = [s.id for s in offered]
        if skill is None:
            reason = f"no skill: name one in the message metadata 'skill' (offered: {ids})"
            await self._reject(task, reason, event_queue)
            return None
        if skill not in ids:
            offered = await self._skills.get(fresh=True)
            ids = [s.id for s in offered]
            if skill not in ids:
                reason = f"unknown skill {skill!r}: no live worker offers it (offered: {ids})"
                await self._reject(task, reason, event_queue)
                return None
        task.metadata[SKILL_KEY] = skill
        # Submitted first: once a client holds the task's id (returnImmediately answers
        # with the first task event), its job is recorded, whatever happens to us.
        await self._jobs.submit(
            task_id,
            skill,
            payload,
            a2a_message=message_json(message),
            owner=caller_of(context.call_context),
        )
        return task

    @staticmethod
    async def _reject(task: Task, reason: str, event_queue: EventQueue) -> None:
        log.info("rejected a message", extra={"task_id": task.id, "reason": reason})
        update = rejection(task.id, task.context_id, reason, now_ms=now_ms())
        task.status.CopyFrom(update.status)
        await event_queue.enqueue_event(task)

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        """Cancel the task's job; the task ends as canceled if the job did."""
        task_id, context_id = context.task_id, context.context_id
        if task_id is None or context_id is None:
            return
        try:
            outcome = await self._jobs.cancel(task_id)
        except JobNotFoundError:
            return
        if outcome.canceled or outcome.status == "CANCELED":
            status = TaskStatus(state=TaskState.TASK_STATE_CANCELED)
            status.timestamp.FromMilliseconds(now_ms())
            await event_queue.enqueue_event(
                TaskStatusUpdateEvent(task_id=task_id, context_id=context_id, status=status)
            )
