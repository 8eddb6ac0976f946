"""What stands before the SDK: bearer tokens, the body limit, the agent card."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from a2a.server.request_handlers.response_helpers import agent_card_to_dict
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from project.core.errors import ConfigurationError
from project.core.models import Skill
from project.core.settings import Settings
from project.gateway.app import gateway_tokens
from project.gateway.auth import BearerAuthMiddleware, CallerTokens
from project.gateway.card import build_card
from project.gateway.limits import BodyLimitMiddleware

TOKENS = CallerTokens.parse("alice:alice-token-0123456789, bob:bob-token-0123456789ab")


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "alice",
        "alice:",
        "al ice:0123456789abcdef",
        "alice:short",
        "a:0123456789abcdef,b:0123456789abcdef",
    ],
)
def test_malformed_tokens_are_refused(raw: str) -> None:
    with pytest.raises(ConfigurationError):
        CallerTokens.parse(raw)


def test_only_digests_are_kept_and_tokens_name_their_caller() -> None:
    assert TOKENS.callers == ["alice", "bob"]
    assert all(len(d) == 32 and b"token" not in d for _, d in TOKENS.entries)
    assert TOKENS.caller_for("alice-token-0123456789") == "alice"
    assert TOKENS.caller_for("bob-token-0123456789ab") == "bob"
    assert TOKENS.caller_for("alice-token-012345678") is None
    assert "0123456789" not in repr(TOKENS)


def test_the_gateway_needs_tokens_outside_dev_mode() -> None:
    with pytest.raises(ConfigurationError, match="AGENTS_GATEWAY_TOKENS"):
        gateway_tokens(Settings(dev_mode=False, gateway_tokens=None))
    assert gateway_tokens(Settings(dev_mode=True, gateway_tokens=None)).callers == ["dev"]


async def whoami(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"user": request.user.display_name or None, "bytes": len(body)})


def app(max_bytes: int = 100) -> Starlette:
    return Starlette(
        routes=[Route("/", whoami, methods=["GET", "POST"]), Route("/open", whoami)],
        middleware=[
            Middleware(BearerAuthMiddleware, tokens=TOKENS, open_paths=["/open"]),
            Middleware(BodyLimitMiddleware, max_bytes=max_bytes, jsonrpc_paths=["/"]),
        ],
    )


def call(method: str, path: str, **kwargs: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app())
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer nope-nope-nope-nope"}, {"Authorization": "Basic YWxpY2U="}],
)
def test_calls_without_a_known_bearer_token_get_401(headers: dict[str, str]) -> None:
    response = call("GET", "/", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["error"]["status"] == "UNAUTHENTICATED"


def test_a_known_token_names_the_caller_and_open_paths_need_none() -> None:
    response = call("GET", "/", headers={"Authorization": "Bearer bob-token-0123456789ab"})
    assert response.json()["user"] == "bob"
    assert call("GET", "/open").status_code == 200


AUTH = {"Authorization": "Bearer alice-token-0123456789"}


def test_a_body_over_the_limit_is_refused_before_it_is_read() -> None:
    assert call("POST", "/", headers=AUTH, content=b"x" * 100).json()["bytes"] == 100
    declared = call("POST", "/", headers=AUTH, content=b"x" * 101)
    assert declared.status_code == 413
    assert declared.json()["error"]["code"] == -32600  # JSON-RPC path

    async def chunks() -> Any:
        for _ in range(30):
            yield b"x" * 10

    chunked = call("POST", "/", headers=AUTH, content=chunks())
    assert chunked.status_code == 413


def raw_call(headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> tuple[int, bytes]:
    """Drive the ASGI app with exactly these headers and body chunks (as a client that
    declares one length and sends another would)."""
    sent: list[dict[str, Any]] = []
    incoming = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"authorization", b"Bearer alice-token-0123456789"), *headers],
        "client": ("127.0.0.1", 1),
        "server": ("gw", 80),
    }
    asyncio.run(app()(scope, receive, send))  # type: ignore[arg-type]
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body


def test_a_body_is_counted_whatever_length_it_declares() -> None:
    """``Content-Length: 10`` with a chunked body of 300 bytes is refused all the same."""
    chunked = [(b"content-length", b"10"), (b"transfer-encoding", b"chunked")]
    status, _ = raw_call(chunked, [b"x" * 100, b"x" * 100, b"x" * 100])
    assert status == 413
    status, body = raw_call([(b"content-length", b"10")], [b"x" * 60])
    assert (status, body) == (200, b'{"user":"alice","bytes":60}')


def test_the_card_names_both_bindings_streaming_skills_and_the_bearer_scheme() -> None:
    settings = Settings(gateway_public_url="https://agents.example.com/", gateway_port=8700)
    skills = [Skill(id="compute", name="Compute", description="Arithmetic", tags=["math"])]
    card = agent_card_to_dict(build_card(settings, skills))
    assert card["supportedInterfaces"] == [
        {
            "url": "https://agents.example.com",
            "protocolBinding": "JSONRPC",
            "protocolVersion": "1.0",
        },
        {
            "url": "https://agents.example.com/rest",
            "protocolBinding": "HTTP+JSON",
            "protocolVersion": "1.0",
        },
    ]
    assert card["capabilities"]["streaming"] is True
    assert not card["capabilities"].get("pushNotifications")
    assert card["securitySchemes"]["bearer"]["httpAuthSecurityScheme"]["scheme"] == "Bearer"
    assert card["securityRequirements"] == [{"schemes": {"bearer": {}}}]
    [skill] = card["skills"]
    assert (skill["id"], skill["description"], skill["tags"]) == ("compute", "Arithmetic", ["math"])
