"""The SDK's default request handler, with the rules our tasks add.

* A message naming a task is only taken by a task waiting for input; to any other
  task it is refused up front, before the SDK would start a request on it. It answers
  the job (``resume_job``) here, before the SDK starts the request: of two answers sent
  at once (to two replicas), one resumes the job and the other is refused
  (``UnsupportedOperationError``), never lost.
* A blocking ``SendMessage`` whose handler answered with a direct Message gets that
  Message (the task stays, completed, with the Message as its status message; streams
  and ``returnImmediately`` see the task).
* ``SubscribeToTask`` always follows the job's log (the SDK's cross-replica path), on
  the replica that runs the task too: the log is where the task's events are, whether
  this replica is following them or holds the task parked waiting for input.
* ``CancelTask`` of a task whose job is not recorded yet (its first milliseconds)
  answers ``TaskNotCancelableError``: try again.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from typing import Any, Final

from a2a.server.cluster.event_stream import TaskEventStream
from a2a.server.cluster.task_store import ConcurrentTaskModificationError, StoredTask
from a2a.server.context import ServerCallContext
from a2a.server.events.event_queue import Event
from a2a.server.request_handlers import DefaultRequestHandlerV2
from a2a.server.request_handlers.request_handler import validate, validate_request_params
from a2a.types.a2a_pb2 import (
    CancelTaskRequest,
    Message,
    SendMessageRequest,
    SubscribeToTaskRequest,
    Task,
    TaskState,
)
from a2a.utils.errors import (
    InvalidParamsError,
    TaskNotCancelableError,
    TaskNotFoundError,
    UnsupportedOperationError,
)
from a2a.utils.proto_utils import validate_proto_required_fields
from a2a.utils.task import apply_history_length, validate_history_length

from project.core.errors import JobNotFoundError, JobNotWaitingError
from project.gateway.executor import JobExecutor
from project.gateway.jobs import Jobs
from project.gateway.mapping import (
    ANSWER_KEY,
    TERMINAL_STATES,
    message_json,
    resume_value_of,
)
from project.gateway.store import RedisTaskStore
from project.gateway.versions import cursor_of

__all__ = ["GatewayRequestHandler"]

log = logging.getLogger("project.gateway")

_RECORD_TRIES: Final = 3


def _terminal(task_id: str, state: TaskState) -> UnsupportedOperationError:
    return UnsupportedOperationError(
        message=f"Task {task_id} is in terminal state: {TaskState.Name(state)}"
    )


class GatewayRequestHandler(DefaultRequestHandlerV2):
    """``DefaultRequestHandlerV2`` over our store, stream and executor."""

    def __init__(
        self,
        *,
        agent_executor: JobExecutor,
        task_store: RedisTaskStore,
        event_stream: TaskEventStream,
        jobs: Jobs,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            agent_executor=agent_executor,
            task_store=task_store,
            event_stream=event_stream,
            **kwargs,
        )
        self._executor = agent_executor
        self._store = task_store
        self._stream = event_stream
        self._jobs = jobs

    async def _owned(self, task_id: str, context: ServerCallContext) -> StoredTask:
        stored = await self._store.get(task_id, context)
        if stored is None:
            raise TaskNotFoundError(f"Task {task_id} not found")
        return stored

    async def _answer(self, params: SendMessageRequest, context: ServerCallContext) -> str:
        """Resume the job of the task the message answers; its id, or '' for a new task.

        Raises:
            TaskNotFoundError: no such task of the caller's.
            InvalidParamsError: the message's context is not the task's.
            UnsupportedOperationError: the task is not waiting for input (or another
                answer resumed it first).
        """
        validate_proto_required_fields(params)
        validate_history_length(params.configuration)
        message = params.message
        task_id = message.task_id
        if not task_id:
            return ""
        stored = await self._owned(task_id, context)
        task = stored.task
        if message.context_id and message.context_id != task.context_id:
            raise InvalidParamsError(
                message=f"Context {message.context_id} does not match context "
                f"{task.context_id} of task {task_id}"
            )
        state = task.status.state
        if state in TERMINAL_STATES:
            raise _terminal(task_id, state)
        if state != TaskState.TASK_STATE_INPUT_REQUIRED:
            raise UnsupportedOperationError(
                message=f"Task {task_id} is {TaskState.Name(state)}: it takes a message only "
                "when it asks for input (TASK_STATE_INPUT_REQUIRED)"
            )
        try:
            await self._jobs.resume(
                task_id, resume_value_of(message), a2a_message=message_json(message)
            )
        except JobNotFoundError as e:
            raise UnsupportedOperationError(message=f"task {task_id} has expired") from e
        except JobNotWaitingError as e:
            now = (await self._owned(task_id, context)).task.status.state
            if now in TERMINAL_STATES:
                raise _terminal(task_id, now) from e
            raise UnsupportedOperationError(
                message=f"Task {task_id} took another answer first: it is "
                f"{TaskState.Name(now)} now, and takes a message only when it asks for input"
            ) from e
        self._executor.answered(task_id, cursor_of(stored.version))
        await self._record_answer(stored, message, context)
        return task_id

    async def _record_answer(
        self, stored: StoredTask, message: Message, context: ServerCallContext
    ) -> None:
        """Put the answer in the task's history now, as the SDK would with the request's
        first event: the job may get far (to its end) before the SDK starts the request."""
        for _ in range(_RECORD_TRIES):
            task = Task()
            task.CopyFrom(stored.task)
            if any(m.message_id == message.message_id for m in task.history):
                return
            if task.status.HasField("message"):
                task.history.append(task.status.message)
                task.status.ClearField("message")
            task.history.append(message)
            try:
                await self._store.save(
                    task, event=None, prev=None, prev_version=stored.version, context=context
                )
                return
            except ConcurrentTaskModificationError:
                stored = await self._owned(task.id, context)
        log.warning("could not record an answer in its task", extra={"task_id": stored.task.id})

    async def on_message_send(
        self, params: SendMessageRequest, context: ServerCallContext
    ) -> Message | Task:
        """``SendMessage``: the task, or the handler's direct Message when it gave one."""
        answered = await self._answer(params, context)
        try:
            result: Message | Task = await super().on_message_send(params, context)
        except UnsupportedOperationError:
            if not answered:
                raise
            # The answer was taken, and the job got further (to its end) before the SDK
            # started the request: the task as it is now is the answer.
            stored = await self._owned(answered, context)
            return apply_history_length(stored.task, params.configuration)
        finally:
            if answered:
                self._executor.forget(answered)
        if (
            isinstance(result, Task)
            and not params.configuration.return_immediately
            and result.status.state == TaskState.TASK_STATE_COMPLETED
            and result.metadata.fields.get(ANSWER_KEY) is not None
            and result.metadata.fields[ANSWER_KEY].string_value == "message"
            and result.status.HasField("message")
        ):
            reply = Message()
            reply.CopyFrom(result.status.message)
            return reply
        return result

    async def on_message_send_stream(
        self, params: SendMessageRequest, context: ServerCallContext
    ) -> AsyncGenerator[Event, None]:
        """``SendStreamingMessage``: as the SDK's, after the answer is taken."""
        answered = await self._answer(params, context)
        started = False
        try:
            async for event in super().on_message_send_stream(params, context):
                started = True
                yield event
        except UnsupportedOperationError:
            if not answered or started:
                raise
            stored = await self._owned(answered, context)  # see on_message_send
            yield apply_history_length(stored.task, params.configuration)
        finally:
            if answered:
                self._executor.forget(answered)

    @validate_request_params
    @validate(
        lambda self: self._agent_card.capabilities.streaming,
        "Streaming is not supported by the agent",
    )
    async def on_subscribe_to_task(
        self, params: SubscribeToTaskRequest, context: ServerCallContext
    ) -> AsyncGenerator[Event, None]:
        """``SubscribeToTask``: the task now, then its events from the job's log."""
        stored = await self._owned(params.id, context)
        if stored.task.status.state in TERMINAL_STATES:
            raise _terminal(params.id, stored.task.status.state)
        async for event in self._subscribe_remote(
            params.id, stored.task, stored.version, self._stream
        ):
            yield event

    async def on_cancel_task(
        self, params: CancelTaskRequest, context: ServerCallContext
    ) -> Task | None:
        """``CancelTask``: as the SDK's; a job not recorded yet cannot be canceled."""
        stored = await self._store.get(params.id, context) if params.id else None
        if (
            stored is not None
            and stored.task.status.state == TaskState.TASK_STATE_SUBMITTED
            and cursor_of(stored.version) is None
        ):
            raise TaskNotCancelableError(
                message=f"Task {params.id}: its job is not recorded yet; try again"
            )
        try:
            canceled: Task | None = await super().on_cancel_task(params, context)
        except ConcurrentTaskModificationError:
            # It ended first, or its job was not recorded yet: see the store's save.
            stored = await self._owned(params.id, context)
            if stored.task.status.state == TaskState.TASK_STATE_CANCELED:
                return stored.task
            raise TaskNotCancelableError(
                message=f"Task {params.id} cannot be canceled now "
                f"({TaskState.Name(stored.task.status.state)})"
            ) from None
        return canceled
