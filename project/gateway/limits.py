"""A limit on request bodies, enforced before the SDK reads one.

A declared ``Content-Length`` over the limit is refused at once; a body without one
(chunked) is read up to the limit and refused as soon as it passes it, so the gateway
never holds more than ``AGENTS_GATEWAY_MAX_BODY_BYTES`` of one request. The refusal is
HTTP 413, with a JSON-RPC error (``-32600``, invalid request) on the JSON-RPC endpoint
and a ``google.rpc.Status``-shaped error elsewhere.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BodyLimitMiddleware"]


class BodyLimitMiddleware:
    """ASGI middleware refusing request bodies over ``max_bytes`` (HTTP 413)."""

    def __init__(self, app: ASGIApp, max_bytes: int, *, jsonrpc_paths: Iterable[str]) -> None:
        self._app = app
        self._max = max_bytes
        self._jsonrpc = frozenset(jsonrpc_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the declared length, or read the body up to the limit, then go on."""
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        length = _content_length(scope.get("headers", []))
        if length is not None:
            if length > self._max:
                await self._refuse(scope, send)
                return
            await self._app(scope, receive, send)
            return
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self._max:
                await self._refuse(scope, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            if messages:
                return messages.pop(0)
            return await receive()

        await self._app(scope, replay, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        message = f"request body over {self._max} bytes"
        payload: dict[str, Any]
        if scope["path"] in self._jsonrpc:
            payload = {
                "jsonrpc": "2.0",
                "id": None,
                "error": {"code": -32600, "message": f"Payload too large: {message}"},
            }
        else:
            payload = {"error": {"code": 413, "status": "INVALID_ARGUMENT", "message": message}}
        body = json.dumps(payload).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _content_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
