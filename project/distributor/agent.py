"""The distributor as an agent: its card, and its presence in the shared state."""

from __future__ import annotations

from typing import Any, ClassVar

from project.core.celery_app.bootsteps import AgentHooks, AgentStep, tier_card
from project.core.constants import DISTRIBUTOR_QUEUE, Tier
from project.core.models import AgentCard, Skill
from project.core.runtime import Runtime
from project.distributor.presence import SharedStateHooks


class DistributorStep(AgentStep):
    """Registers a distributor agent and keeps its shared state current."""

    name = "project.distributor.agent"
    tier: ClassVar[Tier] = Tier.DISTRIBUTOR
    hooks: ClassVar[AgentHooks] = SharedStateHooks()

    def build_card(self, runtime: Runtime, worker: Any) -> AgentCard:
        """The distributor's card: one routing skill on queue ``distributor``."""
        return tier_card(
            runtime,
            worker,
            tier=self.tier,
            queue=DISTRIBUTOR_QUEUE,
            description="Distributor agent: routes jobs to workers and records results",
            skill=Skill(id="route", name="route", description="route jobs to workers"),
        )
