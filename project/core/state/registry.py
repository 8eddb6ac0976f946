"""The registry of agents in Redis: AgentCards, heartbeats, liveness and load.

Liveness is measured on one clock, Redis's: a heartbeat is stamped with Redis's
``TIME`` by the script that records it, and a reader compares it with ``TIME``
read in the same round trip. Agents' wall clocks never meet, so an agent whose
clock is minutes off is as live as any other.

Heartbeats go through even while Redis refuses writes for lack of memory (see
``agent_heartbeat.lua``), so a full Redis does not make its agents look dead. An
agent that finds Redis refusing writes, or had a write refused within
:data:`DEGRADED_FOR_S`, carries a degraded mark (``agents:degraded``, on Redis's clock).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Final

from redis import Redis

from project.core.constants import (
    CHANNEL_AGENTS,
    KEY_AGENT_CARDS,
    KEY_AGENT_DEAD,
    KEY_AGENT_DEGRADED,
    KEY_AGENT_HEARTBEATS,
    KEY_WORKER_JOBS,
    Tier,
)
from project.core.models import AgentCard
from project.core.state.lua import load_script

DEGRADED_FOR_S: Final = 30.0
"""How long after its last refused write an agent still shows as degraded."""
_BEAT_KEYS: Final = [KEY_AGENT_HEARTBEATS, KEY_AGENT_DEAD, KEY_AGENT_CARDS, KEY_AGENT_DEGRADED]


@dataclass(frozen=True)
class Beat:
    """What one heartbeat found."""

    readmitted: bool
    """The agent had been marked dead and is live again."""
    refused: str
    """Redis's refusal of the heartbeat's write probe ('' if it takes writes)."""


@dataclass(frozen=True)
class DegradedMark:
    """An agent that had writes refused lately (it rides them out)."""

    at_ms: int
    """When its last write was refused, in ms on Redis's clock."""
    error: str
    """What Redis said."""


@dataclass(frozen=True)
class RegistrySnapshot:
    """The registry at one moment, with Redis's clock at that moment."""

    cards: dict[str, AgentCard]
    beats: dict[str, int]
    """Last heartbeat per agent, in ms on Redis's clock."""
    dead: set[str]
    now_ms: int
    """Redis's clock when the snapshot was read."""
    degraded: dict[str, DegradedMark] = field(default_factory=dict)
    """Agents' degraded marks (see :meth:`is_degraded`)."""

    def last_write_refusal_ms(self) -> int | None:
        """When any agent last had a write refused (ms, Redis's clock), if any did lately."""
        return max((mark.at_ms for mark in self.degraded.values()), default=None)

    def is_degraded(self, agent_id: str, within_s: float = DEGRADED_FOR_S) -> bool:
        """True if a write of the agent was refused within ``within_s`` (Redis's clock)."""
        mark = self.degraded.get(agent_id)
        return mark is not None and self.now_ms - mark.at_ms <= within_s * 1000

    def heartbeat_age_s(self, agent_id: str) -> float | None:
        """Seconds since the agent's last heartbeat (Redis's clock), or None if it has none."""
        beat = self.beats.get(agent_id)
        return None if beat is None else max(0.0, (self.now_ms - beat) / 1000)

    def is_live(self, agent_id: str, timeout_s: float) -> bool:
        """Registered, not marked dead, and heard from within ``timeout_s``."""
        age = self.heartbeat_age_s(agent_id)
        return (
            agent_id in self.cards
            and agent_id not in self.dead
            and age is not None
            and age <= timeout_s
        )

    def live_workers(self, timeout_s: float) -> list[AgentCard]:
        """Cards of the live workers."""
        return [
            card
            for agent_id, card in self.cards.items()
            if card.tier == Tier.WORKER and self.is_live(agent_id, timeout_s)
        ]

    def silent(self, timeout_s: float) -> list[str]:
        """Registered agents not heard from within ``timeout_s`` and not yet marked dead."""
        return [
            agent_id
            for agent_id in self.cards
            if agent_id not in self.dead and not self.is_live(agent_id, timeout_s)
        ]


class AgentRegistry:
    """Reads and writes agent cards and heartbeats. Every method is one round trip."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._heartbeat = redis.register_script(load_script("agent_heartbeat"))

    def register(self, card: AgentCard) -> None:
        """Publish an agent's card and first heartbeat; clears a dead mark."""
        args = [card.id, CHANNEL_AGENTS, card.model_dump_json(), "", ""]
        self._heartbeat(keys=_BEAT_KEYS, args=args)

    def deregister(self, agent_id: str) -> None:
        """Remove an agent that shuts down cleanly."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.hdel(KEY_AGENT_CARDS, agent_id)
        pipe.zrem(KEY_AGENT_HEARTBEATS, agent_id)
        pipe.srem(KEY_AGENT_DEAD, agent_id)
        pipe.hdel(KEY_AGENT_DEGRADED, agent_id)
        pipe.publish(CHANNEL_AGENTS, json.dumps({"agent_id": agent_id, "event": "deregistered"}))
        pipe.execute()

    def heartbeat(self, agent_id: str) -> bool:
        """Record that an agent is alive. True if it had been marked dead (re-admitted)."""
        return self.beat(agent_id).readmitted

    def beat(
        self, agent_id: str, *, refused_ago_s: float | None = None, refused_error: str = ""
    ) -> Beat:
        """Record that an agent is alive, and whether it is degraded.

        Args:
            agent_id: the agent.
            refused_ago_s: seconds since a write of the agent was last refused, if
                within :data:`DEGRADED_FOR_S`; None drops its degraded mark (unless
                Redis refuses writes right now).
            refused_error: what Redis said then.
        """
        ago = "" if refused_ago_s is None else str(int(refused_ago_s * 1000))
        args = [agent_id, CHANNEL_AGENTS, "", ago, refused_error]
        was_dead, refused = self._heartbeat(keys=_BEAT_KEYS, args=args)
        return Beat(readmitted=bool(was_dead), refused=str(refused or ""))

    def mark_dead(self, agent_id: str) -> bool:
        """Mark an agent dead. True if it was not already marked."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.sadd(KEY_AGENT_DEAD, agent_id)
        pipe.publish(CHANNEL_AGENTS, json.dumps({"agent_id": agent_id, "event": "dead"}))
        added, _ = pipe.execute()
        return bool(added)

    def cards(self) -> dict[str, AgentCard]:
        """Every registered card, live or not, by agent id."""
        raw: dict[str, str] = self._redis.hgetall(KEY_AGENT_CARDS)  # type: ignore[assignment]
        return {agent_id: AgentCard.model_validate_json(card) for agent_id, card in raw.items()}

    def snapshot(self) -> RegistrySnapshot:
        """Cards, heartbeats, the dead set, degraded marks and Redis's clock, in one round trip."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(KEY_AGENT_CARDS)
        pipe.zrange(KEY_AGENT_HEARTBEATS, 0, -1, withscores=True)
        pipe.smembers(KEY_AGENT_DEAD)
        pipe.hgetall(KEY_AGENT_DEGRADED)
        pipe.time()
        cards_raw, beats, dead, degraded_raw, (seconds, micros) = pipe.execute()
        return RegistrySnapshot(
            cards={key: AgentCard.model_validate_json(card) for key, card in cards_raw.items()},
            beats={agent: int(score) for agent, score in beats},
            dead=set(dead),
            now_ms=int(seconds) * 1000 + int(micros) // 1000,
            degraded=_degraded_marks(degraded_raw),
        )

    def live_workers(self, timeout_s: float) -> list[AgentCard]:
        """Worker cards whose heartbeat is recent and that are not marked dead."""
        return self.snapshot().live_workers(timeout_s)

    def silent_agents(self, timeout_s: float) -> list[str]:
        """Registered agents whose last heartbeat is older than ``timeout_s``, not yet dead."""
        return self.snapshot().silent(timeout_s)

    def dead_agents(self) -> set[str]:
        """Agents currently marked dead."""
        members: set[str] = self._redis.smembers(KEY_AGENT_DEAD)  # type: ignore[assignment]
        return members

    def loads(self, worker_ids: list[str]) -> dict[str, int]:
        """Unfinished jobs assigned to each worker, in one round trip."""
        pipe = self._redis.pipeline(transaction=False)
        for worker_id in worker_ids:
            pipe.scard(KEY_WORKER_JOBS + worker_id)
        return dict(zip(worker_ids, (int(n) for n in pipe.execute()), strict=True))


def _degraded_marks(raw: dict[str, str]) -> dict[str, DegradedMark]:
    marks: dict[str, DegradedMark] = {}
    for agent_id, text in raw.items():
        try:
            mark = json.loads(text)
            marks[agent_id] = DegradedMark(at_ms=int(mark["at_ms"]), error=str(mark["error"]))
        except (ValueError, KeyError, TypeError):
            continue
    return marks
