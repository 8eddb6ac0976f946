"""The SDK's default request handler, with the two rules our tasks add.

* A message naming a task is only taken by a task waiting for input; to any other
  task it is refused up front, before the SDK would start a request on it.
* A blocking ``SendMessage`` whose handler answered with a direct Message gets that
  Message (the task stays, completed, with the Message as its status message; streams
  and ``returnImmediately`` see the task).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from a2a.server.context import ServerCallContext
from a2a.server.events.event_queue import Event
from a2a.server.request_handlers import DefaultRequestHandlerV2
from a2a.types.a2a_pb2 import Message, SendMessageRequest, Task, TaskState
from a2a.utils.errors import TaskNotFoundError, UnsupportedOperationError

from project.gateway.mapping import ANSWER_KEY, TERMINAL_STATES
from project.gateway.store import RedisTaskStore

__all__ = ["GatewayRequestHandler"]


class GatewayRequestHandler(DefaultRequestHandlerV2):
    """``DefaultRequestHandlerV2`` over our store, stream and executor."""

    def __init__(self, *, task_store: RedisTaskStore, **kwargs: Any) -> None:
        super().__init__(task_store=task_store, **kwargs)
        self._store = task_store

    async def _check_follow_up(
        self, params: SendMessageRequest, context: ServerCallContext
    ) -> None:
        task_id = params.message.task_id
        if not task_id:
            return
        stored = await self._store.get(task_id, context)
        if stored is None:
            raise TaskNotFoundError(f"Task {task_id} not found")
        state = stored.task.status.state
        if state in TERMINAL_STATES:
            raise UnsupportedOperationError(
                message=f"Task {task_id} is in terminal state: {TaskState.Name(state)}"
            )
        if state != TaskState.TASK_STATE_INPUT_REQUIRED:
            raise UnsupportedOperationError(
                message=f"Task {task_id} is {TaskState.Name(state)}: it takes a message only "
                "when it asks for input (TASK_STATE_INPUT_REQUIRED)"
            )

    async def on_message_send(
        self, params: SendMessageRequest, context: ServerCallContext
    ) -> Message | Task:
        """``SendMessage``: the task, or the handler's direct Message when it gave one."""
        await self._check_follow_up(params, context)
        result: Message | Task = await super().on_message_send(params, context)
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
        """``SendStreamingMessage``: as the SDK's, after the follow-up check."""
        await self._check_follow_up(params, context)
        async for event in super().on_message_send_stream(params, context):
            yield event
