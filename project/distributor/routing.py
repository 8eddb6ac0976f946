"""Routing strategies: pure functions from live worker cards to one worker.

Every strategy first keeps the *eligible* workers: those that offer the job's
task type, carry every required tag, and (if the job names workers) are named.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from project.core.models import AgentCard, Requirements


@dataclass(frozen=True, slots=True)
class Candidate:
    """An eligible worker and its current number of unfinished jobs."""

    card: AgentCard
    load: int = 0

    @property
    def utilisation(self) -> float:
        """Unfinished jobs per unit of concurrency."""
        return self.load / max(1, self.card.concurrency)


def eligible(
    cards: Sequence[AgentCard], task_type: str, requirements: Requirements
) -> list[AgentCard]:
    """Workers that can run ``task_type`` under ``requirements``, sorted by id."""
    needed = set(requirements.tags)
    named = set(requirements.worker_ids)
    return sorted(
        (
            card
            for card in cards
            if task_type in card.task_types
            and needed.issubset(card.tags)
            and (not named or card.id in named)
        ),
        key=lambda card: card.id,
    )


def route_least_busy(candidates: Sequence[Candidate], *, turn: int) -> AgentCard:
    """The lowest utilisation; ties are taken in turn so idle workers share the load."""
    best = min(c.utilisation for c in candidates)
    tied = [c for c in candidates if c.utilisation == best]
    return tied[turn % len(tied)].card


def route_round_robin(candidates: Sequence[Candidate], *, turn: int) -> AgentCard:
    """Each eligible worker in turn (``turn`` is a counter shared by all distributors)."""
    return candidates[turn % len(candidates)].card


def route_capability(
    candidates: Sequence[Candidate], *, requirements: Requirements, turn: int
) -> AgentCard:
    """The closest fit: fewest skills and tags beyond what the job needs, then least busy.

    Specialised workers take the jobs that need them, keeping general ones free.
    """

    def spare(candidate: Candidate) -> int:
        card = candidate.card
        return len(card.task_types) - 1 + len(set(card.tags) - set(requirements.tags))

    fewest = min(spare(c) for c in candidates)
    return route_least_busy([c for c in candidates if spare(c) == fewest], turn=turn)


def route_weighted(candidates: Sequence[Candidate], *, draw: float) -> AgentCard:
    """Random, proportional to each card's weight; ``draw`` is uniform in [0, 1)."""
    total = sum(c.card.weight for c in candidates)
    point = draw * total
    for candidate in candidates:
        point -= candidate.card.weight
        if point < 0:
            return candidate.card
    return candidates[-1].card


NEEDS_LOAD = frozenset({"least_busy", "capability"})
NEEDS_SHARED_TURN = frozenset({"round_robin"})

Chooser = Callable[[Sequence[Candidate], Requirements, int, float], AgentCard]

STRATEGIES: dict[str, Chooser] = {
    "least_busy": lambda c, r, turn, draw: route_least_busy(c, turn=turn),
    "round_robin": lambda c, r, turn, draw: route_round_robin(c, turn=turn),
    "capability": lambda c, r, turn, draw: route_capability(c, requirements=r, turn=turn),
    "weighted": lambda c, r, turn, draw: route_weighted(c, draw=draw),
}


def choose(
    strategy: str,
    candidates: Sequence[Candidate],
    requirements: Requirements,
    *,
    turn: int = 0,
    draw: float = 0.0,
) -> AgentCard:
    """Pick one worker among non-empty ``candidates`` with the named strategy."""
    if not candidates:
        raise ValueError("no candidates to route to")
    return STRATEGIES[strategy](candidates, requirements, turn, draw)
