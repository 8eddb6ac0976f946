"""Each agent's local state as a LangGraph thread, checkpointed in Redis.

An agent process keeps its :class:`~project.core.models.LocalAgentState` (status,
local tasks, history, variables) in memory; its hops only append to it. Every
heartbeat interval, and at stop, the state is written as a new checkpoint of the
process's own LangGraph thread (``agent:{agent id}``, or ``agent:{agent id}:{index}``
in a prefork pool child, whose tasks record into a state of their own) by the
Redis checkpointer; on start it is restored from that thread. Billiard gives a
replacement child the index of the child it replaces, so a restarted pool process
finds its predecessor's state.

Never per message: a checkpoint is written only when the state changed since the
last one, at most once per interval.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from functools import cache
from typing import Any, TypedDict

from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from pydantic import ValidationError
from redis import Redis

from project.core.checkpoint import RedisSaver
from project.core.errors import StateError
from project.core.models import LocalAgentState

log = logging.getLogger("project.agent_state")

AGENT_THREAD_PREFIX = "agent:"
"""Thread ids of agents' own states start with this (job threads are job ids)."""
AGENT_STATE_TTL_S = 7 * 24 * 3600
"""How long an agent's thread outlives its last checkpoint; an agent gone longer starts afresh."""
KEEP_CHECKPOINTS = 2
"""Checkpoints kept per agent thread: the newest, and the one before it."""
_NODE = "keep"


class _AgentThread(TypedDict, total=False):
    state: dict[str, Any]
    """The LocalAgentState, as JSON."""


def agent_thread_id(agent_id: str, process_index: int | None) -> str:
    """The thread of an agent's process: ``process_index`` is None outside a pool child."""
    suffix = "" if process_index is None else f":{process_index}"
    return f"{AGENT_THREAD_PREFIX}{agent_id}{suffix}"


@cache
def _agent_graph() -> Any:
    """The graph every agent thread belongs to: one channel, its state, one no-op node."""
    graph = StateGraph(_AgentThread)
    graph.add_node(_NODE, lambda _: {})
    graph.add_edge(START, _NODE)
    graph.add_edge(_NODE, END)
    return graph


def _config(thread_id: str) -> RunnableConfig:
    return {"configurable": {"thread_id": thread_id}}


def _parse(thread_id: str, values: dict[str, Any] | None) -> LocalAgentState | None:
    state = (values or {}).get("state")
    if state is None:
        return None
    try:
        return LocalAgentState.model_validate(state)
    except ValidationError as exc:
        raise StateError(f"agent thread {thread_id!r} is not a LocalAgentState: {exc}") from exc


class AgentStateKeeper:
    """Restores one process's local state once, and checkpoints it whenever it changed."""

    def __init__(self, redis: Redis, thread_id: str) -> None:
        self.thread_id = thread_id
        self._saver = RedisSaver(redis, keep_last=KEEP_CHECKPOINTS)
        self._graph = _agent_graph().compile(checkpointer=self._saver)
        self._lock = threading.Lock()
        self._last_saved: str | None = None
        self.restored = False

    def restore(self) -> LocalAgentState | None:
        """This process's last checkpointed state (the first call only; later ones: None).

        A thread that cannot be read is logged and ignored: the agent starts afresh.
        """
        with self._lock:
            if self.restored:
                return None
            self.restored = True
            try:
                state = _parse(
                    self.thread_id, self._graph.get_state(_config(self.thread_id)).values
                )
            except Exception:
                log.warning(
                    "ignoring an unreadable agent state",
                    exc_info=True,
                    extra={"agent_thread": self.thread_id},
                )
                return None
            if state is not None:
                self._last_saved = state.model_dump_json()
            return state

    def save_if_changed(self, state: LocalAgentState) -> bool:
        """Checkpoint ``state`` unless it equals what was last saved or restored."""
        with self._lock:
            data = state.model_dump_json()
            if data == self._last_saved:
                return False
            self._graph.update_state(
                _config(self.thread_id), {"state": state.model_dump(mode="json")}, as_node=_NODE
            )
            self._saver.expire_thread(self.thread_id, AGENT_STATE_TTL_S)
            self._last_saved = data
            return True


def load_agent_states(redis: Redis, thread_ids: Iterable[str]) -> dict[str, LocalAgentState]:
    """The last checkpointed states of the given agent threads that have one.

    Raises:
        StateError: a thread's state does not parse as a LocalAgentState.
    """
    saver = RedisSaver(redis, keep_last=KEEP_CHECKPOINTS)
    found: dict[str, LocalAgentState] = {}
    for thread_id in thread_ids:
        checkpoint = saver.get_tuple(_config(thread_id))
        if checkpoint is None:
            continue
        state = _parse(thread_id, dict(checkpoint.checkpoint["channel_values"]))
        if state is not None:
            found[thread_id] = state
    return found
