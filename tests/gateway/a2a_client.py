"""The official A2A client, set up as the gateway's tests use it (shared with tests/integration)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from a2a.client import Client, ClientConfig, ClientFactory
from a2a.types.a2a_pb2 import (
    Message,
    Part,
    Role,
    SendMessageConfiguration,
    SendMessageRequest,
    StreamResponse,
    Task,
)
from google.protobuf.json_format import ParseDict
from google.protobuf.struct_pb2 import Value


@asynccontextmanager
async def a2a_client(
    url: str, token: str | None, *, streaming: bool = True, binding: str = "JSONRPC"
) -> AsyncIterator[Client]:
    """An SDK client for the gateway at ``url``, sending ``token`` as a bearer token."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(headers=headers, timeout=60) as http:
        config = ClientConfig(
            streaming=streaming, httpx_client=http, supported_protocol_bindings=[binding]
        )
        client = await ClientFactory(config).create_from_url(url)
        try:
            yield client
        finally:
            await client.close()


def user_message(
    *,
    text: str | None = None,
    data: Any = None,
    skill: str | None = None,
    task_id: str = "",
    context_id: str = "",
    message_id: str | None = None,
) -> Message:
    """A user message with a text and/or a data part, naming ``skill`` in its metadata."""
    parts = []
    if text is not None:
        parts.append(Part(text=text))
    if data is not None:
        parts.append(Part(data=ParseDict(data, Value())))
    message = Message(
        message_id=message_id or f"m-{uuid.uuid4().hex[:12]}",
        role=Role.ROLE_USER,
        parts=parts,
        task_id=task_id,
        context_id=context_id,
    )
    if skill is not None:
        message.metadata.update({"skill": skill})
    return message


def send_request(message: Message, *, return_immediately: bool = False) -> SendMessageRequest:
    """A SendMessage request for ``message``."""
    return SendMessageRequest(
        message=message,
        configuration=SendMessageConfiguration(return_immediately=return_immediately),
    )


async def send(client: Client, message: Message, **options: Any) -> list[StreamResponse]:
    """Every response the client yields for one message (one, when not streaming)."""
    return [r async for r in client.send_message(send_request(message, **options))]


def final_task(responses: list[StreamResponse]) -> Task:
    """The task the last response is about (a task, or a status update applied to none)."""
    last = responses[-1]
    if last.HasField("task"):
        return last.task
    raise AssertionError(f"the last response is not a task: {last}")
