"""The coordinator as an agent: its card, and the live view it keeps while it runs."""

from __future__ import annotations

from typing import ClassVar

from project.coordinator.view import CoordinatorViewHooks
from project.core.celery_app.bootsteps import AgentHooks, TierAgentStep
from project.core.constants import COORDINATOR_QUEUE, Tier
from project.core.models import Skill


class CoordinatorStep(TierAgentStep):
    """Registers the coordinator agent and runs its live view."""

    name = "project.coordinator.bootstep"
    tier: ClassVar[Tier] = Tier.COORDINATOR
    hooks: ClassVar[AgentHooks] = CoordinatorViewHooks()
    queue: ClassVar[str] = COORDINATOR_QUEUE
    description: ClassVar[str] = "Coordinator agent: takes jobs in, runs health checks"
    skill: ClassVar[Skill] = Skill(
        id="intake", name="intake", description="validate and record jobs"
    )
