"""State kept in Redis: job records, the agent registry, leases, shared state, results.

Every module here talks to Redis; the key layout is in :mod:`project.core.constants`
and the Lua scripts in ``lua/``. :mod:`~project.core.state.connections` builds the
clients (``redis://``, ``rediss://``, ``sentinel://``).
"""

from project.core.state.connections import connect_redis
from project.core.state.jobs import JobStore
from project.core.state.leases import LeaseManager
from project.core.state.registry import AgentRegistry
from project.core.state.shared import SharedStateStore

__all__ = ["AgentRegistry", "JobStore", "LeaseManager", "SharedStateStore", "connect_redis"]
