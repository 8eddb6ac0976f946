"""Distributor tier: routing strategies, dispatch, result callbacks."""

from project.distributor.routing import STRATEGIES, Candidate, choose, eligible

__all__ = ["STRATEGIES", "Candidate", "choose", "eligible"]
