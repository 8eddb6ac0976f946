"""Snapshots of an agent's local state in Redis: saved periodically, restored on start.

A snapshot is the JSON of a :class:`~project.core.models.LocalAgentState` at
``snapshot:{snapshot id}``. The snapshot id is the agent id, except in a Celery
prefork pool child, whose tasks record into a state of their own: there it is
``{agent id}:{process index}``. Billiard gives a replacement child the index of
the child it replaces, so a restarted pool process finds its predecessor's state.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

from pydantic import ValidationError
from redis import Redis

from project.core.constants import KEY_SNAPSHOT
from project.core.errors import StateError
from project.core.models import LocalAgentState

log = logging.getLogger("project.snapshots")

SNAPSHOT_TTL_S = 7 * 24 * 3600
"""How long a snapshot outlives its last save; an agent gone longer starts afresh."""


def snapshot_key(snapshot_id: str) -> str:
    """Redis key of one snapshot."""
    return f"{KEY_SNAPSHOT}{snapshot_id}"


def snapshot_id_for(agent_id: str, process_index: int | None) -> str:
    """The snapshot id of an agent's process: ``process_index`` is None outside a pool child."""
    return agent_id if process_index is None else f"{agent_id}:{process_index}"


def save_snapshot(
    redis: Redis,
    state: LocalAgentState,
    *,
    snapshot_id: str | None = None,
    ttl_s: int = SNAPSHOT_TTL_S,
) -> str:
    """Save ``state`` under ``snapshot_id`` (default: its agent id); return the JSON saved."""
    data = state.model_dump_json()
    redis.set(snapshot_key(snapshot_id or state.agent_id), data, ex=ttl_s)
    return data


def _parse(snapshot_id: str, data: str) -> LocalAgentState:
    try:
        return LocalAgentState.model_validate_json(data)
    except ValidationError as exc:
        raise StateError(f"snapshot {snapshot_id!r} is not a LocalAgentState: {exc}") from exc


def load_snapshot(redis: Redis, agent_id: str) -> LocalAgentState | None:
    """The state saved under ``agent_id`` (a snapshot id), or None if there is none.

    Raises:
        StateError: the saved data does not parse as a LocalAgentState.
    """
    data: str | None = redis.get(snapshot_key(agent_id))  # type: ignore[assignment]
    return None if data is None else _parse(agent_id, data)


def load_snapshots(redis: Redis, snapshot_ids: Iterable[str]) -> dict[str, LocalAgentState]:
    """The snapshots that exist among ``snapshot_ids``, in one round trip.

    Raises:
        StateError: some saved data does not parse as a LocalAgentState.
    """
    ids = list(snapshot_ids)
    if not ids:
        return {}
    values: list[str | None] = redis.mget([snapshot_key(i) for i in ids])  # type: ignore[assignment]
    return {i: _parse(i, data) for i, data in zip(ids, values, strict=True) if data is not None}


class SnapshotKeeper:
    """Restores one process's local state once and saves it whenever it changed."""

    def __init__(self, redis: Redis, snapshot_id: str) -> None:
        self._redis = redis
        self.snapshot_id = snapshot_id
        self._lock = threading.Lock()
        self._last_saved: str | None = None
        self.restored = False

    def restore(self) -> LocalAgentState | None:
        """Load this process's snapshot (the first call only; later calls return None).

        A snapshot that cannot be read is logged and ignored: the agent starts afresh.
        """
        with self._lock:
            if self.restored:
                return None
            self.restored = True
            try:
                state = load_snapshot(self._redis, self.snapshot_id)
            except StateError:
                log.warning(
                    "ignoring unreadable snapshot",
                    exc_info=True,
                    extra={"snapshot_id": self.snapshot_id},
                )
                return None
            if state is not None:
                self._last_saved = state.model_dump_json()
            return state

    def save_if_changed(self, state: LocalAgentState) -> bool:
        """Save ``state`` unless it equals what was last saved or restored."""
        with self._lock:
            data = state.model_dump_json()
            if data == self._last_saved:
                return False
            self._redis.set(snapshot_key(self.snapshot_id), data, ex=SNAPSHOT_TTL_S)
            self._last_saved = data
            return True
