"""The gateway's ASGI app: the SDK's Starlette routes over our Redis store, stream and
executor, behind bearer auth and a body limit; and :func:`serve`, which runs it under
uvicorn (``agents gateway``).

Routes: ``GET /.well-known/agent-card.json`` (open), ``GET /healthz`` (open; 200 while
Redis answers), JSON-RPC at ``POST /`` and HTTP+JSON under ``/rest``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Final

from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes, create_rest_routes
from a2a.types.a2a_pb2 import AgentCard
from a2a.utils.constants import AGENT_CARD_WELL_KNOWN_PATH
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from project.core.errors import ConfigurationError
from project.core.runtime import get_runtime
from project.core.settings import Settings
from project.gateway.auth import DEV_TOKENS, BearerAuthMiddleware, CallerTokens
from project.gateway.card import JSONRPC_PATH, REST_PREFIX, build_card
from project.gateway.events import JobLogStream
from project.gateway.executor import JobExecutor, SkillCatalog
from project.gateway.handler import GatewayRequestHandler
from project.gateway.jobs import Jobs, ProjectJobs, Threads
from project.gateway.limits import BodyLimitMiddleware
from project.gateway.store import RedisTaskStore, TaskRecords
from project.gateway.wire import ContentTypeMiddleware

__all__ = [
    "HEALTH_PATH",
    "ClientErrorTracebacks",
    "Gateway",
    "create_app",
    "gateway_tokens",
    "serve",
]

log = logging.getLogger("project.gateway")

HEALTH_PATH: Final = "/healthz"
INTERRUPTED_TASK_RELEASE_S: Final = 60.0
"""A task waiting for input is kept in this replica's memory this long, then dropped
(its state is in Redis; the answer, on any replica, takes it up again)."""
SHUTDOWN_GRACE_S: Final = 2.0


def gateway_tokens(settings: Settings) -> CallerTokens:
    """The callers and their tokens; a dev-mode gateway without any gets one dev token.

    Raises:
        ConfigurationError: no tokens outside dev mode, or malformed ones.
    """
    if settings.gateway_tokens is not None:
        return CallerTokens.parse(settings.gateway_tokens.get_secret_value())
    if settings.dev_mode:
        log.warning("AGENTS_GATEWAY_TOKENS is unset: dev mode accepts the dev token only")
        return CallerTokens.parse(DEV_TOKENS)
    raise ConfigurationError(
        "AGENTS_GATEWAY_TOKENS is required (caller:token pairs, tokens of 16+ characters)"
    )


@dataclass
class Gateway:
    """The parts of one gateway process, for tests that reach inside."""

    app: Starlette
    store: RedisTaskStore
    handler: GatewayRequestHandler
    skills: SkillCatalog


def create_app(
    settings: Settings,
    *,
    jobs: Jobs | None = None,
    records: TaskRecords | None = None,
    threads: Threads | None = None,
) -> Gateway:
    """Build the gateway on the job system (``jobs``, default: the public ``project`` API).

    Raises:
        ConfigurationError: missing or malformed tokens (see :func:`gateway_tokens`).
    """
    tokens = gateway_tokens(settings)
    threads = threads or Threads()
    jobs = jobs or ProjectJobs(threads)
    records = records or TaskRecords(get_runtime().redis, ttl_s=settings.result_ttl_s)
    store = RedisTaskStore(records, jobs, threads)
    skills = SkillCatalog(jobs)
    card = build_card(settings, [])
    handler = GatewayRequestHandler(
        agent_executor=JobExecutor(jobs, skills, default_skill=settings.gateway_default_skill),
        task_store=store,
        agent_card=card,
        event_stream=JobLogStream(jobs, store.peek),
        jobs=jobs,
        interrupted_task_timeout=INTERRUPTED_TASK_RELEASE_S,
    )

    async def current_card(_: AgentCard) -> AgentCard:
        return build_card(settings, await skills.get())

    async def health(_: Request) -> Response:
        if await jobs.ping():
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "redis unreachable"}, status_code=503)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        log.info("A2A gateway up", extra={"callers": tokens.callers})
        try:
            yield
        finally:
            await handler.aclose()
            threads.close()

    routes: list[BaseRoute] = [
        Route(HEALTH_PATH, health, methods=["GET"]),
        *create_agent_card_routes(card, card_modifier=current_card),
        *create_jsonrpc_routes(handler, JSONRPC_PATH, shutdown_grace_period=SHUTDOWN_GRACE_S),
        *create_rest_routes(
            handler, path_prefix=REST_PREFIX, shutdown_grace_period=SHUTDOWN_GRACE_S
        ),
    ]
    middleware = [
        Middleware(
            BearerAuthMiddleware,
            tokens=tokens,
            open_paths=[AGENT_CARD_WELL_KNOWN_PATH, HEALTH_PATH],
        ),
        Middleware(
            BodyLimitMiddleware,
            max_bytes=settings.gateway_max_body_bytes,
            jsonrpc_paths=[JSONRPC_PATH],
        ),
        Middleware(ContentTypeMiddleware, jsonrpc_paths=[JSONRPC_PATH], rest_prefix=REST_PREFIX),
    ]
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    return Gateway(app=app, store=store, handler=handler, skills=skills)


_CLIENT_ERRORS: Final = frozenset(
    {"Failed to validate base JSON-RPC request", "Failed to parse request params"}
)


class ClientErrorTracebacks(logging.Filter):
    """Keeps the SDK's log lines about a client's malformed request, minus the traceback.

    A stream of bad requests is the client's fault and gets the spec's error; a
    traceback per request would only bury the gateway's own errors.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Drop the traceback of a malformed-request record; keep every record."""
        if record.exc_info and record.msg in _CLIENT_ERRORS:
            error = record.exc_info[1]
            record.msg = f"{record.msg}: {type(error).__name__}: {error}"
            record.exc_info = None
            record.exc_text = None
        return True


def serve(settings: Settings) -> None:
    """Run the gateway under uvicorn until interrupted (``agents gateway``).

    Raises:
        ConfigurationError: missing or malformed tokens, or unsafe A2A keys.
    """
    import uvicorn

    _ = get_runtime().keyring  # the gateway's calls into the tiers are signed: keys first
    logging.getLogger("a2a.server.routes.jsonrpc_dispatcher").addFilter(ClientErrorTracebacks())
    gateway = create_app(settings)
    uvicorn.run(
        gateway.app,
        host=settings.gateway_host,
        port=settings.gateway_port,
        log_level=settings.log_level.lower(),
        proxy_headers=True,
        timeout_graceful_shutdown=int(SHUTDOWN_GRACE_S) + 3,
        access_log=False,
    )
