"""The coordinator as an agent: its card, and the live view it keeps while it runs."""

from __future__ import annotations

from typing import Any, ClassVar

from project.coordinator.view import CoordinatorViewHooks
from project.core.celery_app.bootsteps import AgentHooks, AgentStep, tier_card
from project.core.constants import COORDINATOR_QUEUE, Tier
from project.core.models import AgentCard, Skill
from project.core.runtime import Runtime


class CoordinatorStep(AgentStep):
    """Registers the coordinator agent and runs its live view."""

    name = "project.coordinator.agent"
    tier: ClassVar[Tier] = Tier.COORDINATOR
    hooks: ClassVar[AgentHooks] = CoordinatorViewHooks()

    def build_card(self, runtime: Runtime, worker: Any) -> AgentCard:
        """The coordinator's card: one intake skill on queue ``coordinator``."""
        return tier_card(
            runtime,
            worker,
            tier=self.tier,
            queue=COORDINATOR_QUEUE,
            description="Coordinator agent: takes jobs in, runs health checks",
            skill=Skill(id="intake", name="intake", description="validate and record jobs"),
        )
