"""Routing strategies are pure: cards and loads in, one worker out. No Redis here."""

from __future__ import annotations

from collections import Counter

import pytest

from project.core.models import AgentCard, Requirements, Skill
from project.distributor.routing import (
    STRATEGIES,
    Candidate,
    choose,
    eligible,
    route_capability,
    route_least_busy,
    route_round_robin,
    route_weighted,
)

ALL_TYPES = ("compute", "data_processing", "generic")
NO_REQUIREMENTS = Requirements()


def card(
    worker_id: str,
    *,
    task_types: tuple[str, ...] = ALL_TYPES,
    tags: tuple[str, ...] = (),
    concurrency: int = 1,
    weight: int = 1,
) -> AgentCard:
    return AgentCard(
        name=worker_id,
        description=f"worker {worker_id}",
        version="0.0.0",
        url=f"celery://worker.{worker_id}",
        skills=[Skill(id=t, name=t) for t in task_types],
        id=worker_id,
        tier="worker",
        queue=f"worker.{worker_id}",
        concurrency=concurrency,
        tags=list(tags),
        weight=weight,
    )


def ids(cards: list[AgentCard]) -> list[str]:
    return [c.id for c in cards]


# --- eligible ------------------------------------------------------------------


def test_eligible_filters_by_task_type_and_sorts_by_id() -> None:
    cards = [card("w3"), card("w1", task_types=("generic",)), card("w2", task_types=("compute",))]
    assert ids(eligible(cards, "compute", NO_REQUIREMENTS)) == ["w2", "w3"]
    assert ids(eligible(cards, "generic", NO_REQUIREMENTS)) == ["w1", "w3"]
    assert eligible(cards, "unknown", NO_REQUIREMENTS) == []


def test_eligible_needs_every_required_tag() -> None:
    cards = [card("a", tags=("gpu",)), card("b", tags=("gpu", "ssd")), card("c", tags=("ssd",))]
    assert ids(eligible(cards, "compute", Requirements(tags=["gpu"]))) == ["a", "b"]
    assert ids(eligible(cards, "compute", Requirements(tags=["gpu", "ssd"]))) == ["b"]
    assert eligible(cards, "compute", Requirements(tags=["nope"])) == []
    assert ids(eligible(cards, "compute", NO_REQUIREMENTS)) == ["a", "b", "c"]


def test_eligible_honours_worker_ids() -> None:
    cards = [card("w1"), card("w2", tags=("gpu",)), card("w3")]
    assert ids(eligible(cards, "compute", Requirements(worker_ids=["w3", "w1"]))) == ["w1", "w3"]
    assert eligible(cards, "compute", Requirements(worker_ids=["w9"])) == []
    both = Requirements(worker_ids=["w1", "w2"], tags=["gpu"])
    assert ids(eligible(cards, "compute", both)) == ["w2"]


# --- least_busy ------------------------------------------------------------------


def test_least_busy_picks_lowest_utilisation_not_lowest_load() -> None:
    # b has more jobs but twice the concurrency: 3/4 < 1/1.
    candidates = [Candidate(card("a"), load=1), Candidate(card("b", concurrency=4), load=3)]
    assert Candidate(card("b", concurrency=4), load=3).utilisation == 0.75
    for turn in range(5):
        assert route_least_busy(candidates, turn=turn).id == "b"


def test_least_busy_rotates_ties() -> None:
    candidates = [
        Candidate(card("a"), load=0),
        Candidate(card("b"), load=2),
        Candidate(card("c"), load=0),
        Candidate(card("d"), load=0),
    ]
    picks = [route_least_busy(candidates, turn=turn).id for turn in range(6)]
    assert picks == ["a", "c", "d", "a", "c", "d"]


def test_utilisation_of_zero_concurrency_does_not_divide_by_zero() -> None:
    assert Candidate(card("a", concurrency=0), load=2).utilisation == 2.0


# --- round_robin -------------------------------------------------------------------


def test_round_robin_cycles_through_every_candidate_whatever_its_load() -> None:
    candidates = [
        Candidate(card("a"), load=9),
        Candidate(card("b"), load=0),
        Candidate(card("c"), load=0),
    ]
    picks = [route_round_robin(candidates, turn=turn).id for turn in range(7)]
    assert picks == ["a", "b", "c", "a", "b", "c", "a"]
    counts = Counter(route_round_robin(candidates, turn=t).id for t in range(100, 400))
    assert counts == {"a": 100, "b": 100, "c": 100}


# --- capability ----------------------------------------------------------------------


def test_capability_prefers_the_most_specialised_fit() -> None:
    gpu_only = card("gpu1", task_types=("compute",), tags=("gpu",))
    gpu_general = card("gpu2", tags=("gpu", "ssd"))
    plain = card("plain", task_types=("compute",))
    candidates = [Candidate(gpu_general), Candidate(gpu_only), Candidate(plain)]
    needs_gpu = Requirements(tags=["gpu"])
    gpu_candidates = [c for c in candidates if "gpu" in c.card.tags]
    for turn in range(4):
        assert route_capability(gpu_candidates, requirements=needs_gpu, turn=turn).id == "gpu1"
        # A job that needs nothing goes to the worker with nothing to spare.
        assert route_capability(candidates, requirements=NO_REQUIREMENTS, turn=turn).id == "plain"


def test_capability_counts_spare_skills_as_well_as_spare_tags() -> None:
    narrow = card("narrow", task_types=("compute",))
    broad = card("broad")
    candidates = [Candidate(broad), Candidate(narrow)]
    assert route_capability(candidates, requirements=NO_REQUIREMENTS, turn=0).id == "narrow"


def test_capability_breaks_ties_by_least_busy_then_in_turn() -> None:
    candidates = [
        Candidate(card("a", tags=("gpu",)), load=2),
        Candidate(card("b", tags=("gpu",)), load=0),
        Candidate(card("c", tags=("gpu",)), load=0),
        Candidate(card("d", tags=("gpu", "ssd")), load=0),  # idle but less specialised
    ]
    needs_gpu = Requirements(tags=["gpu"])
    picks = [route_capability(candidates, requirements=needs_gpu, turn=t).id for t in range(4)]
    assert picks == ["b", "c", "b", "c"]


# --- weighted -------------------------------------------------------------------------


def test_weighted_is_proportional_to_weights() -> None:
    candidates = [
        Candidate(card("a", weight=1)),
        Candidate(card("b", weight=1)),
        Candidate(card("c", weight=8)),
    ]
    draws = [(i + 0.5) / 1000 for i in range(1000)]  # evenly spread over [0, 1)
    counts = Counter(route_weighted(candidates, draw=d).id for d in draws)
    assert counts == {"a": 100, "b": 100, "c": 800}


def test_weighted_maps_draw_intervals_in_order() -> None:
    candidates = [Candidate(card("a", weight=1)), Candidate(card("b", weight=3))]
    assert route_weighted(candidates, draw=0.0).id == "a"
    assert route_weighted(candidates, draw=0.2499).id == "a"
    assert route_weighted(candidates, draw=0.25).id == "b"
    assert route_weighted(candidates, draw=0.9999999).id == "b"


def test_weighted_never_picks_beyond_the_list_for_a_draw_near_one() -> None:
    candidates = [Candidate(card("a", weight=3)), Candidate(card("b", weight=7))]
    assert route_weighted(candidates, draw=1.0 - 1e-16).id == "b"


# --- choose ----------------------------------------------------------------------------


def test_choose_dispatches_to_the_named_strategy() -> None:
    candidates = [
        Candidate(card("a", task_types=("compute",), weight=1), load=1),
        Candidate(card("b", weight=9), load=0),
    ]
    # Candidates are already eligible; capability prefers the narrower one even if busier.
    assert choose("least_busy", candidates, NO_REQUIREMENTS, turn=0).id == "b"
    assert choose("round_robin", candidates, NO_REQUIREMENTS, turn=0).id == "a"
    assert choose("round_robin", candidates, NO_REQUIREMENTS, turn=1).id == "b"
    assert choose("capability", candidates, NO_REQUIREMENTS, turn=0).id == "a"
    assert choose("weighted", candidates, NO_REQUIREMENTS, draw=0.05).id == "a"
    assert choose("weighted", candidates, NO_REQUIREMENTS, draw=0.5).id == "b"


def test_every_configurable_strategy_is_registered() -> None:
    from typing import get_args

    from project.core.settings import RoutingStrategyName

    assert set(STRATEGIES) == set(get_args(RoutingStrategyName))


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_choose_with_no_candidates_raises(strategy: str) -> None:
    with pytest.raises(ValueError, match="no candidates"):
        choose(strategy, [], NO_REQUIREMENTS, turn=3, draw=0.5)
