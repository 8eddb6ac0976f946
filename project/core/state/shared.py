"""Shared state of a distributor in Redis, written optimistically.

``shared:distributor:{id}`` is a hash that the coordinator and that distributor
both write. Every write is a compare-and-set on the hash's ``version`` field
(one Lua script): read the state and its version, change it, write only if the
version is still the one read. A writer that lost the race reads again and
retries, a bounded number of times with jittered backoff, then raises
:class:`~project.core.errors.ConflictError`. Lost races are counted in
``stats:shared_state`` (field ``conflicts``); every write is announced on
``events:shared``.

Each field of :class:`~project.core.models.SharedAgentState` is one hash field
holding JSON, so ``HGETALL`` shows the state readably.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from redis import Redis

from project.core import metrics
from project.core.a2a.envelope import now_ms
from project.core.constants import CHANNEL_SHARED, KEY_SHARED, KEY_SHARED_STATS
from project.core.errors import ConflictError
from project.core.models import SharedAgentState
from project.core.state.lua import load_script

Writer = Literal["coordinator", "distributor"]
Mutation = Callable[[SharedAgentState], None]

VERSION_FIELD = "version"


@dataclass(frozen=True, slots=True)
class Backoff:
    """Jittered exponential pause between optimistic retries."""

    base_s: float = 0.001
    """Upper bound of the first pause."""
    cap_s: float = 0.05
    """Largest upper bound of any pause."""

    def pause_s(self, attempt: int) -> float:
        """A random pause for retry number ``attempt`` (0-based): full jitter."""
        return random.uniform(0.0, min(self.cap_s, self.base_s * 2**attempt))


class VersionedHash:
    """Redis hashes with a ``version`` field, written only by compare-and-set."""

    def __init__(self, redis: Redis, *, stats_key: str = KEY_SHARED_STATS) -> None:
        self._redis = redis
        self._stats_key = stats_key
        self._cas = redis.register_script(load_script("shared_compare_and_set"))

    def read(self, key: str) -> tuple[int, dict[str, str]]:
        """The hash's version (0 if it does not exist) and its other fields."""
        raw: dict[str, str] = self._redis.hgetall(key)  # type: ignore[assignment]
        version = int(raw.pop(VERSION_FIELD, 0) or 0)
        return version, raw

    def compare_and_set(
        self,
        key: str,
        expected_version: int,
        fields: Mapping[str, str],
        *,
        channel: str = "",
        message: str = "",
    ) -> bool:
        """Write ``fields`` and version ``expected_version + 1`` if the version is unchanged.

        On success ``message`` is published on ``channel`` (unless empty) in the
        same atomic step. On failure nothing is written and a conflict is counted.
        """
        if not fields:
            raise ValueError("a versioned write needs at least one field")
        if VERSION_FIELD in fields:
            raise ValueError(f"{VERSION_FIELD!r} is set by the store, not by the caller")
        args: list[str | int] = [expected_version, expected_version + 1, channel, message]
        for name, value in fields.items():
            args += [name, value]
        return bool(self._cas(keys=[key, self._stats_key], args=args))

    def stats(self) -> dict[str, int]:
        """Writes and conflicts counted so far."""
        raw: dict[str, str] = self._redis.hgetall(self._stats_key)  # type: ignore[assignment]
        return {name: int(count) for name, count in raw.items()}


def shared_key(distributor_id: str) -> str:
    """Redis key of a distributor's shared state."""
    return f"{KEY_SHARED}{distributor_id}"


def _encode(state: SharedAgentState) -> dict[str, str]:
    data = state.model_dump(mode="json", exclude={VERSION_FIELD})
    return {name: json.dumps(value, separators=(",", ":")) for name, value in data.items()}


def _decode(distributor_id: str, version: int, raw: Mapping[str, str]) -> SharedAgentState:
    data = {name: json.loads(value) for name, value in raw.items()}
    data.update(distributor_id=distributor_id, version=version)
    return SharedAgentState.model_validate(data)


class SharedStateStore:
    """Reads and optimistically writes ``shared:distributor:{id}``.

    Args:
        redis: the shared-state store.
        max_retries: retries after a lost race before :class:`ConflictError`.
        backoff: pause between retries.
    """

    DEFAULT_MAX_RETRIES = 50

    def __init__(
        self,
        redis: Redis,
        *,
        max_retries: int = DEFAULT_MAX_RETRIES,
        backoff: Backoff | None = None,
    ) -> None:
        self._hash = VersionedHash(redis)
        self.max_retries = max_retries
        self.backoff = backoff or Backoff()
        self.conflicts_seen = 0
        """Races this store object lost (the Redis counter counts every writer's)."""

    def read(self, distributor_id: str) -> SharedAgentState | None:
        """The distributor's shared state, or None if nobody wrote it yet."""
        version, raw = self._hash.read(shared_key(distributor_id))
        if not version and not raw:
            return None
        return _decode(distributor_id, version, raw)

    def update(
        self,
        distributor_id: str,
        mutate: Mutation,
        *,
        writer: Writer,
        max_retries: int | None = None,
    ) -> SharedAgentState:
        """Read the state, apply ``mutate`` to it, and write it if nobody wrote in between.

        ``mutate`` changes the state in place; it may run several times (once per
        attempt), each time on a fresh read, so it must not depend on earlier runs.
        Version fields, ``distributor_id`` and ``updated_ms`` are set by the store.
        A mutation that changes nothing on an existing state writes nothing.

        Args:
            distributor_id: whose state.
            mutate: the change, applied to the state as read.
            writer: who writes; bumps ``coordinator_version`` or ``distributor_version``.
            max_retries: overrides the store's bound for this call.

        Returns:
            The state as written (or as read, if the mutation changed nothing).

        Raises:
            ConflictError: every attempt lost to a concurrent writer.
        """
        retries = self.max_retries if max_retries is None else max_retries
        key = shared_key(distributor_id)
        for attempt in range(retries + 1):
            version, raw = self._hash.read(key)
            exists = bool(version or raw)
            if exists:
                state = _decode(distributor_id, version, raw)
            else:
                state = SharedAgentState(distributor_id=distributor_id)
            before = state.model_copy(deep=True)
            mutate(state)
            if exists and state == before:
                return state
            state.distributor_id = distributor_id
            state.version = version + 1
            state.coordinator_version = before.coordinator_version
            state.distributor_version = before.distributor_version
            if writer == "coordinator":
                state.coordinator_version += 1
            else:
                state.distributor_version += 1
            state.updated_ms = now_ms()
            message = json.dumps(
                {
                    "distributor_id": distributor_id,
                    "version": state.version,
                    "writer": writer,
                    "status": state.status,
                }
            )
            if self._hash.compare_and_set(
                key, version, _encode(state), channel=CHANNEL_SHARED, message=message
            ):
                return state
            self.conflicts_seen += 1
            metrics.count_conflict(writer)
            if attempt < retries:
                time.sleep(self.backoff.pause_s(attempt))
        raise ConflictError(
            f"shared state of distributor {distributor_id!r}: concurrent writes won "
            f"{retries + 1} attempts in a row; retries ran out"
        )

    def conflicts(self) -> int:
        """Lost races counted in Redis, by every writer."""
        return self._hash.stats().get("conflicts", 0)
