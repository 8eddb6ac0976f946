"""Agent cards made up for tests that register agents by hand."""

from __future__ import annotations

from project.core.models import AgentCard, Skill


def agent_card(agent_id: str, *, tier: str = "worker", skill: str = "compute") -> AgentCard:
    """A card for ``agent_id`` serving the one skill ``skill`` on its own queue.

    Args:
        agent_id: The agent's id and name; its url and queue are ``worker.<agent_id>``.
        tier: The agent's tier.
        skill: Id and name of its only skill.
    """
    return AgentCard(
        name=agent_id,
        description="test agent",
        version="0",
        url=f"celery://worker.{agent_id}",
        skills=[Skill(id=skill, name=skill)],
        id=agent_id,
        tier=tier,
        queue=f"worker.{agent_id}",
    )
