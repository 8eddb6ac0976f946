"""Bearer tokens: who is calling the gateway.

``AGENTS_GATEWAY_TOKENS`` lists ``caller:token`` pairs. Only each token's SHA-256 is
kept in memory, and a presented token is compared with every one of them with
``hmac.compare_digest`` (no early exit), so neither timing nor a memory dump gives a
token away. A caller may hold several tokens (rotation: add the new one, move clients,
drop the old one). The caller's name owns the tasks it creates and is all that reaches
the tiers (as the job's ``owner``); tokens never leave the gateway.

:class:`BearerAuthMiddleware` requires a token on every request except the open paths
(the agent card, the health check) and answers 401 with ``WWW-Authenticate: Bearer``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from starlette.authentication import AuthCredentials, SimpleUser, UnauthenticatedUser
from starlette.types import ASGIApp, Receive, Scope, Send

from project.core.errors import ConfigurationError

__all__ = ["DEV_TOKENS", "MIN_TOKEN_CHARS", "BearerAuthMiddleware", "CallerTokens"]

MIN_TOKEN_CHARS: Final = 16
DEV_TOKENS: Final = "dev:agents-dev-token-not-secret"
"""The token pair a gateway in dev mode accepts when ``AGENTS_GATEWAY_TOKENS`` is unset."""
_CALLER: Final = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


@dataclass(frozen=True, slots=True)
class CallerTokens:
    """Callers and the digests of their tokens."""

    entries: tuple[tuple[str, bytes], ...]

    @classmethod
    def parse(cls, raw: str) -> CallerTokens:
        """Read ``caller:token,caller:token,...``.

        Raises:
            ConfigurationError: a pair without a caller or a token, a caller name with
                characters other than letters, digits and ``_.@-``, a token shorter than
                16 characters, a token given twice, or no pair at all.
        """
        entries: list[tuple[str, bytes]] = []
        for chunk in raw.split(","):
            chunk = chunk.strip()
            if not chunk:
                continue
            caller, sep, token = chunk.partition(":")
            caller, token = caller.strip(), token.strip()
            if not sep or not _CALLER.match(caller):
                raise ConfigurationError(
                    "AGENTS_GATEWAY_TOKENS: each entry is caller:token, the caller made of "
                    "letters, digits and _.@- (at most 64)"
                )
            if len(token) < MIN_TOKEN_CHARS:
                raise ConfigurationError(
                    f"AGENTS_GATEWAY_TOKENS: the token of {caller!r} is shorter than "
                    f"{MIN_TOKEN_CHARS} characters"
                )
            digest = _digest(token)
            if any(hmac.compare_digest(digest, d) for _, d in entries):
                raise ConfigurationError("AGENTS_GATEWAY_TOKENS: a token is given twice")
            entries.append((caller, digest))
        if not entries:
            raise ConfigurationError("AGENTS_GATEWAY_TOKENS lists no caller:token pair")
        return cls(tuple(entries))

    @property
    def callers(self) -> list[str]:
        """The callers' names, each once."""
        return sorted({caller for caller, _ in self.entries})

    def caller_for(self, token: str) -> str | None:
        """The caller whose token this is, or None; the time taken does not depend on it."""
        presented = _digest(token)
        found: str | None = None
        for caller, digest in self.entries:
            if hmac.compare_digest(presented, digest) and found is None:
                found = caller
        return found


def bearer_token(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, if there is one."""
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


class BearerAuthMiddleware:
    """ASGI middleware: a known bearer token, or 401 (see the module docstring)."""

    def __init__(self, app: ASGIApp, tokens: CallerTokens, *, open_paths: Iterable[str]) -> None:
        self._app = app
        self._tokens = tokens
        self._open = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Authenticate an HTTP request, then pass it on with ``scope["user"]`` set."""
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        if scope["path"] in self._open:
            scope["user"] = UnauthenticatedUser()
            scope["auth"] = AuthCredentials()
            await self._app(scope, receive, send)
            return
        token = bearer_token(scope.get("headers", []))
        caller = self._tokens.caller_for(token) if token is not None else None
        if caller is None:
            why = "a bearer token is required" if token is None else "unknown bearer token"
            await _unauthorized(send, why)
            return
        scope["user"] = SimpleUser(caller)
        scope["auth"] = AuthCredentials(["caller"])
        await self._app(scope, receive, send)


async def _unauthorized(send: Send, why: str) -> None:
    body = json.dumps(
        {"error": {"code": 401, "status": "UNAUTHENTICATED", "message": why}}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", b'Bearer realm="agents"'),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
