"""Content types on the wire, as the A2A 1.0 bindings name them.

* A JSON-RPC request must be JSON: a POST to the JSON-RPC endpoint labelled with another
  content type (``text/plain``, a form...) gets ``ContentTypeNotSupportedError``
  (``-32005``, HTTP 415) instead of a parse error. An unlabelled body is read as JSON.
* HTTP+JSON answers are labelled ``application/json`` (section 11.1 of the spec; the SDK
  labels them ``application/a2a+json``, which JSON clients do not all recognise).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ContentTypeMiddleware"]

_A2A_JSON = "application/a2a+json"


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


class ContentTypeMiddleware:
    """ASGI middleware for the content types above."""

    def __init__(self, app: ASGIApp, *, jsonrpc_paths: Iterable[str], rest_prefix: str) -> None:
        self._app = app
        self._jsonrpc = frozenset(jsonrpc_paths)
        self._rest = rest_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse non-JSON JSON-RPC requests; relabel HTTP+JSON answers."""
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        path = scope["path"]
        if path in self._jsonrpc and scope["method"] == "POST":
            content_type = next(
                (
                    v.decode("latin-1")
                    for k, v in scope.get("headers", [])
                    if k.lower() == b"content-type"
                ),
                None,
            )
            if content_type is not None and not _is_json(content_type):
                await _unsupported(send, content_type)
                return
        if self._rest not in path:
            await self._app(scope, receive, send)
            return

        async def relabel(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                if headers.get("content-type", "").startswith(_A2A_JSON):
                    headers["content-type"] = "application/json"
            await send(message)

        await self._app(scope, receive, relabel)


async def _unsupported(send: Send, content_type: str) -> None:
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": None,
            "error": {
                "code": -32005,
                "message": f"Content-Type {content_type!r} is not supported: send application/json",
            },
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 415,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
