"""The SDK's ``AgentExecutor`` for our jobs: a message starts or resumes a job, and the
request follows the job's log until the task ends or asks for input.

A new message is checked first (its skill is on offer, it has a payload), becomes a
submitted task, then a job under the task's id, submitted for the caller; a message to
a task waiting for input answers it (``resume_job``). Either way the request then
follows the job's log (:func:`project.gateway.events.follow`), turning each event into
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
from a2a.utils.errors import InvalidParamsError, UnsupportedOperationError

from project.core.a2a.envelope import now_ms
from project.core.errors import JobNotFoundError, JobNotWaitingError
from project.core.models import Skill
from project.gateway.events import A2AEvent, follow
from project.gateway.jobs import Jobs
from project.gateway.mapping import (
    SKILL_KEY,
    InvalidMessageError,
    cursor_of_task,
    message_json,
    payload_of,
    rejection,
    resume_value_of,
    skill_of,
    task_state,
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

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        """Start or resume the task's job, then pass on its events until it ends or waits."""
        task_id, context_id, message = context.task_id, context.context_id, context.message
        if task_id is None or context_id is None or message is None:
            raise InvalidParamsError(message="a message is required")
        current = context.current_task
        if current is None:
            started = await self._start(context, task_id, context_id, message, event_queue)
            if not started:
                return
            after, state = None, TaskState.TASK_STATE_SUBMITTED
        else:
            after, state = await self._resume(current, message), current.status.state

        async def on_idle() -> list[A2AEvent] | None:
            refusal = await self._jobs.intake_refusal(task_id)
            if refusal is None:
                return None
            return [_ending(task_id, context_id, refusal)]

        async for _, event in follow(
            self._jobs, task_id, context_id, after=after, state=state, on_idle=on_idle
        ):
            await event_queue.enqueue_event(event)

    async def _start(
        self,
        context: RequestContext,
        task_id: str,
        context_id: str,
        message: Message,
        event_queue: EventQueue,
    ) -> bool:
        """Submit the message's job; False if it was rejected instead (already answered)."""
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
            return False
        offered = await self._skills.get()
        ids = [s.id for s in offered]
        if skill is None:
            reason = f"no skill: name one in the message metadata 'skill' (offered: {ids})"
            await self._reject(task, reason, event_queue)
            return False
        if skill not in ids:
            offered = await self._skills.get(fresh=True)
            ids = [s.id for s in offered]
            if skill not in ids:
                reason = f"unknown skill {skill!r}: no live worker offers it (offered: {ids})"
                await self._reject(task, reason, event_queue)
                return False
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
        await event_queue.enqueue_event(task)
        return True

    @staticmethod
    async def _reject(task: Task, reason: str, event_queue: EventQueue) -> None:
        log.info("rejected a message", extra={"task_id": task.id, "reason": reason})
        update = rejection(task.id, task.context_id, reason, now_ms=now_ms())
        task.status.CopyFrom(update.status)
        await event_queue.enqueue_event(task)

    async def _resume(self, current: Task, message: Message) -> str | None:
        """Answer the job the task waits on; returns the log cursor to follow it from."""
        if current.status.state != TaskState.TASK_STATE_INPUT_REQUIRED:
            raise UnsupportedOperationError(
                message=f"task {current.id} is not waiting for input: it takes no message now"
            )
        after = cursor_of_task(current)
        try:
            await self._jobs.resume(
                current.id, resume_value_of(message), a2a_message=message_json(message)
            )
        except JobNotWaitingError:
            pass  # canceled or timed out meanwhile: its log tells the client
        except JobNotFoundError as e:
            raise UnsupportedOperationError(message=f"task {current.id} has expired") from e
        return after

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


def _ending(task_id: str, context_id: str, error: dict[str, str]) -> TaskStatusUpdateEvent:
    """The status update of a job the coordinator refused before recording it."""
    state = task_state("FAILED", error)
    update = rejection(task_id, context_id, f"{error['type']}: {error['message']}", now_ms=now_ms())
    update.status.state = state
    return update
