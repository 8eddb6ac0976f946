"""The gateway's Agent Card (A2A 1.0), served at ``/.well-known/agent-card.json``.

Its skills are the task types live workers offer now, read from the registry (at most
every few seconds): a task type appears when a worker offering it starts and goes when
the last one is gone. It names both bindings under the public base URL, streaming, no
push notifications, and the bearer scheme every other call needs.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Final

from a2a.types.a2a_pb2 import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentProvider,
    AgentSkill,
    HTTPAuthSecurityScheme,
    SecurityRequirement,
    SecurityScheme,
    StringList,
)

from project.core.models import Skill
from project.core.settings import Settings

__all__ = ["JSONRPC_PATH", "REST_PREFIX", "SECURITY_SCHEME", "base_url", "build_card"]

JSONRPC_PATH: Final = "/"
REST_PREFIX: Final = "/rest"
SECURITY_SCHEME: Final = "bearer"
PROTOCOL_VERSION: Final = "1.0"
MODES: Final = ["text/plain", "application/json"]


def base_url(settings: Settings) -> str:
    """The public base URL (no trailing slash) clients reach this gateway at."""
    if settings.gateway_public_url:
        return settings.gateway_public_url.rstrip("/")
    host = settings.gateway_host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://{host}:{settings.gateway_port}"


def _version() -> str:
    try:
        return version("agents-celery")
    except PackageNotFoundError:  # running from a source tree
        return "0.0.0"


def build_card(settings: Settings, skills: list[Skill]) -> AgentCard:
    """The card for ``skills`` (the task types on offer now)."""
    base = base_url(settings)
    card = AgentCard(
        name="agents-celery",
        description=(
            "A Celery and Redis agent system: each skill is a task type its workers run. "
            "Name the skill in the message metadata 'skill'; a data part is the payload."
        ),
        version=_version(),
        provider=AgentProvider(organization="agents-celery", url=base),
        supported_interfaces=[
            AgentInterface(
                url=f"{base}{JSONRPC_PATH}".rstrip("/") or base,
                protocol_binding="JSONRPC",
                protocol_version=PROTOCOL_VERSION,
            ),
            AgentInterface(
                url=f"{base}{REST_PREFIX}",
                protocol_binding="HTTP+JSON",
                protocol_version=PROTOCOL_VERSION,
            ),
        ],
        capabilities=AgentCapabilities(
            streaming=True, push_notifications=False, extended_agent_card=False
        ),
        default_input_modes=MODES,
        default_output_modes=MODES,
        skills=[
            AgentSkill(
                id=s.id,
                name=s.name or s.id,
                description=s.description or s.name or s.id,
                tags=s.tags or [s.id],
                input_modes=MODES,
                output_modes=MODES,
            )
            for s in skills
        ],
    )
    card.security_schemes[SECURITY_SCHEME].CopyFrom(
        SecurityScheme(
            http_auth_security_scheme=HTTPAuthSecurityScheme(
                scheme="Bearer",
                description="A token from AGENTS_GATEWAY_TOKENS: 'Authorization: Bearer <token>'",
            )
        )
    )
    card.security_requirements.append(SecurityRequirement(schemes={SECURITY_SCHEME: StringList()}))
    return card
