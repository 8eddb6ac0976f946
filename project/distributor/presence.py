"""The distributor's side of its shared state, written on every heartbeat.

A distributor records in ``shared:distributor:{id}`` that it is ``active`` and
a summary of what it did recently: how many of each event its processes
recorded in their local histories. Its tasks run in pool child processes, each
with a local state of its own, so the summary is read from their checkpointed states
(saved once per heartbeat interval) and the main process's.
"""

from __future__ import annotations

import logging
from collections import Counter

from project.core.celery_app.bootsteps import AgentHooks
from project.core.models import AgentCard, SharedAgentState
from project.core.runtime import Runtime
from project.core.state.agent_state import agent_thread_id, load_agent_states

log = logging.getLogger("project.distributor.presence")

ACTIVE = "active"
STOPPED = "stopped"


def recent_activity(rt: Runtime, agent_id: str, processes: int) -> dict[str, int]:
    """Events by kind in the saved histories of an agent's main process and pool children."""
    ids = [agent_thread_id(agent_id, None)] + [
        agent_thread_id(agent_id, index) for index in range(processes)
    ]
    counts: Counter[str] = Counter()
    for state in load_agent_states(rt.redis, ids).values():
        counts.update(str(event.get("event", "unknown")) for event in state.history)
    return dict(sorted(counts.items()))


class SharedStateHooks(AgentHooks):
    """Writes the distributor's status and recent activity into its shared state."""

    def on_heartbeat(self, runtime: Runtime, card: AgentCard) -> None:
        """Record ``active`` and the recent activity."""
        summary = recent_activity(runtime, card.id, card.concurrency)

        def mutate(state: SharedAgentState) -> None:
            state.status = ACTIVE
            state.task_summary = summary

        runtime.shared_state.update(card.id, mutate, writer="distributor")

    def before_stop(self, runtime: Runtime, card: AgentCard) -> None:
        """Record ``stopped``: the distributor leaves on purpose."""

        def mutate(state: SharedAgentState) -> None:
            state.status = STOPPED

        runtime.shared_state.update(card.id, mutate, writer="distributor")
