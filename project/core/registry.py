"""The registry of agents in Redis: AgentCards, heartbeats, liveness and load."""

from __future__ import annotations

import json

from redis import Redis

from project.core.constants import (
    CHANNEL_AGENTS,
    KEY_AGENT_CARDS,
    KEY_AGENT_DEAD,
    KEY_AGENT_HEARTBEATS,
    KEY_WORKER_JOBS,
)
from project.core.envelope import now_ms
from project.core.models import AgentCard

_HEARTBEAT = """
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
if redis.call('SREM', KEYS[2], ARGV[1]) == 1 then
  redis.call('PUBLISH', ARGV[3], cjson.encode({agent_id=ARGV[1], event='readmitted'}))
  return 1
end
return 0
"""


class AgentRegistry:
    """Reads and writes agent cards and heartbeats. Every method is one round trip."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._heartbeat = redis.register_script(_HEARTBEAT)

    def register(self, card: AgentCard) -> None:
        """Publish an agent's card and first heartbeat; clears a dead mark."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(KEY_AGENT_CARDS, card.id, card.model_dump_json())
        pipe.zadd(KEY_AGENT_HEARTBEATS, {card.id: now_ms()})
        pipe.srem(KEY_AGENT_DEAD, card.id)
        pipe.publish(CHANNEL_AGENTS, json.dumps({"agent_id": card.id, "event": "registered"}))
        pipe.execute()

    def deregister(self, agent_id: str) -> None:
        """Remove an agent that shuts down cleanly."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.hdel(KEY_AGENT_CARDS, agent_id)
        pipe.zrem(KEY_AGENT_HEARTBEATS, agent_id)
        pipe.srem(KEY_AGENT_DEAD, agent_id)
        pipe.publish(CHANNEL_AGENTS, json.dumps({"agent_id": agent_id, "event": "deregistered"}))
        pipe.execute()

    def heartbeat(self, agent_id: str) -> bool:
        """Record that an agent is alive. True if it had been marked dead (re-admitted)."""
        keys = [KEY_AGENT_HEARTBEATS, KEY_AGENT_DEAD]
        return bool(self._heartbeat(keys=keys, args=[agent_id, now_ms(), CHANNEL_AGENTS]))

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

    def snapshot(self) -> tuple[dict[str, AgentCard], dict[str, int], set[str]]:
        """Cards, last heartbeat (ms) per agent, and the dead set, in one round trip."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(KEY_AGENT_CARDS)
        pipe.zrange(KEY_AGENT_HEARTBEATS, 0, -1, withscores=True)
        pipe.smembers(KEY_AGENT_DEAD)
        cards_raw, beats, dead = pipe.execute()
        cards = {key: AgentCard.model_validate_json(card) for key, card in cards_raw.items()}
        return cards, {agent: int(score) for agent, score in beats}, set(dead)

    def live_workers(self, timeout_s: float) -> list[AgentCard]:
        """Worker cards whose heartbeat is recent and that are not marked dead."""
        cards, beats, dead = self.snapshot()
        oldest = now_ms() - int(timeout_s * 1000)
        return [
            card
            for agent_id, card in cards.items()
            if card.tier == "worker" and agent_id not in dead and beats.get(agent_id, 0) >= oldest
        ]

    def silent_agents(self, timeout_s: float) -> list[str]:
        """Registered agents whose last heartbeat is older than ``timeout_s``, not yet dead."""
        cards, beats, dead = self.snapshot()
        oldest = now_ms() - int(timeout_s * 1000)
        return [a for a in cards if a not in dead and beats.get(a, 0) < oldest]

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
