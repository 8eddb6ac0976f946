"""Limits on request bodies, enforced before the SDK reads one.

A declared ``Content-Length`` over the limit is refused at once. Whatever was declared
(a length can be wrong, or come with ``Transfer-Encoding: chunked``, which wins), the
body is counted as it arrives and refused as soon as it passes the limit, so the gateway
never holds more than ``AGENTS_GATEWAY_MAX_BODY_BYTES`` of one request. The refusal is
HTTP 413, with a JSON-RPC error (``-32600``, invalid request) on the JSON-RPC endpoint
and a ``google.rpc.Status``-shaped error elsewhere.

A JSON-RPC body nested deeper than Python's JSON parser goes (about a thousand levels)
is answered as malformed JSON (``-32700``), where the SDK would answer an internal
error and log a traceback.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BodyLimitMiddleware"]


class BodyLimitMiddleware:
    """ASGI middleware refusing request bodies over ``max_bytes`` (HTTP 413)."""

    def __init__(self, app: ASGIApp, max_bytes: int, *, jsonrpc_paths: Iterable[str]) -> None:
        self._app = app
        self._max = max_bytes
        self._jsonrpc = frozenset(jsonrpc_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse a declared length over the limit, then count the body as it arrives."""
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        length = _content_length(scope.get("headers", []))
        if length is not None and length > self._max:
            await self._refuse(scope, send)
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
        if scope["path"] in self._jsonrpc and _too_deep(messages):
            await _send_json(send, 200, _rpc_error(-32700, "Parse error: JSON nested too deeply"))
            return

        async def replay() -> Message:
            if messages:
                return messages.pop(0)
            return await receive()

        await self._app(scope, replay, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        message = f"request body over {self._max} bytes"
        payload: dict[str, Any]
        if scope["path"] in self._jsonrpc:
            payload = _rpc_error(-32600, f"Payload too large: {message}")
        else:
            payload = {"error": {"code": 413, "status": "INVALID_ARGUMENT", "message": message}}
        await _send_json(send, 413, payload, close=True)


def _rpc_error(code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": message}}


async def _send_json(
    send: Send, status: int, payload: dict[str, Any], *, close: bool = False
) -> None:
    body = json.dumps(payload).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


_DEEP_ENOUGH_TO_CHECK: Final = 500
"""Fewer brackets than this cannot nest deep enough to trouble the JSON parser."""


def _too_deep(messages: list[Message]) -> bool:
    """True if the body is JSON nested deeper than Python's JSON parser can go."""
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.request")
    if body.count(b"[") + body.count(b"{") < _DEEP_ENOUGH_TO_CHECK:
        return False
    try:
        json.loads(body)
    except RecursionError:
        return True
    except ValueError:
        return False  # not JSON (or not UTF-8): the SDK says so
    return False


def _content_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
