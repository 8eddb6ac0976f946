"""The coordinator's side of the distributors' shared state.

The coordinator writes what it knows from the registry into each distributor's
``shared:distributor:{id}``: ``dead`` once the health check marked it so
(``active`` again once it is re-admitted), and the live workers it may route
to. The distributor writes its own side on its heartbeat (``active``, recent
activity) and at shutdown (``stopped``).
"""

from __future__ import annotations

import logging

from project.core.constants import DISTRIBUTOR
from project.core.errors import ConflictError
from project.core.models import SharedAgentState
from project.core.runtime import Runtime

log = logging.getLogger("project.coordinator.shared_view")

ACTIVE = "active"
DEAD = "dead"


def sync_shared_state(rt: Runtime) -> dict[str, str]:
    """Write each registered distributor's death and assignable workers into its shared state.

    Safe to run from several processes at once (every write is optimistic) and
    cheap when nothing changed (an unchanged state is not written). A distributor
    whose write keeps conflicting is skipped and retried on the next run.

    Returns:
        The status now recorded for each registered distributor.
    """
    registry = rt.registry.snapshot()
    cards, dead = registry.cards, registry.dead
    live_workers = sorted(
        card.id for card in registry.live_workers(rt.settings.heartbeat_timeout_s)
    )
    recorded: dict[str, str] = {}
    for agent_id, card in sorted(cards.items()):
        if card.tier != DISTRIBUTOR:
            continue
        dead_now = agent_id in dead

        def mutate(state: SharedAgentState, dead_now: bool = dead_now) -> None:
            if dead_now:
                state.status = DEAD
            elif state.status == DEAD:
                state.status = ACTIVE  # re-admitted: take back our own verdict only
            state.assigned_workers = [] if dead_now else live_workers

        try:
            written = rt.shared_state.update(agent_id, mutate, writer="coordinator")
        except ConflictError:
            log.warning("shared state kept changing; next run", extra={"distributor": agent_id})
            continue
        recorded[agent_id] = written.status
    return recorded
