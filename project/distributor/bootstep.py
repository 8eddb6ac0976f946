"""The distributor as an agent: its card, and its presence in the shared state."""

from __future__ import annotations

from typing import ClassVar

from project.core.celery_app.bootsteps import AgentHooks, TierAgentStep
from project.core.constants import DISTRIBUTOR_QUEUE, Tier
from project.core.models import Skill
from project.distributor.presence import SharedStateHooks


class DistributorStep(TierAgentStep):
    """Registers a distributor agent and keeps its shared state current."""

    name = "project.distributor.bootstep"
    tier: ClassVar[Tier] = Tier.DISTRIBUTOR
    hooks: ClassVar[AgentHooks] = SharedStateHooks()
    queue: ClassVar[str] = DISTRIBUTOR_QUEUE
    description: ClassVar[str] = "Distributor agent: routes jobs to workers and records results"
    skill: ClassVar[Skill] = Skill(id="route", name="route", description="route jobs to workers")
