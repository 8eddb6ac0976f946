"""Celery tasks of the distributor tier, on queue ``distributor``."""

from __future__ import annotations

from typing import Any

from project.core.celery_app import app
from project.core.constants import DISTRIBUTOR, DISTRIBUTOR_QUEUE, TASK_ASSIGN, TASK_COMPLETE
from project.core.errors import A2AError
from project.core.graph import run_guarded_hop
from project.core.lifecycle import lifecycle_step, tier_card_builder
from project.core.models import Skill
from project.core.runtime import get_runtime
from project.distributor.dispatch import ASSIGN_GRAPH, COMPLETE_GRAPH
from project.distributor.presence import SharedStateHooks

_HOP_OPTIONS: dict[str, Any] = {
    "bind": True,
    "ignore_result": True,
    "store_errors_even_if_ignored": True,
    "throws": (A2AError,),
}


# max_retries=None on the task: retry() itself reads None as "the default of 3".
# The job's deadline bounds the waiting instead.
@app.task(name=TASK_ASSIGN, max_retries=None, **_HOP_OPTIONS)
def assign(self: Any, envelope: Any) -> None:
    """Route a signed job REQUEST to one live worker's queue."""
    state = run_guarded_hop(ASSIGN_GRAPH, envelope, task_name=TASK_ASSIGN)
    if state.get("reply") == "wait":
        # No eligible worker yet; try again until the job's deadline.
        raise self.retry(countdown=get_runtime().settings.assign_retry_s)


@app.task(name=TASK_COMPLETE, **_HOP_OPTIONS)
def complete(self: Any, envelope: Any) -> None:
    """Record a worker's signed RESPONSE as the job's result (the link callback)."""
    run_guarded_hop(COMPLETE_GRAPH, envelope, task_name=TASK_COMPLETE)


build_distributor_card = tier_card_builder(
    DISTRIBUTOR,
    DISTRIBUTOR_QUEUE,
    "Distributor agent: routes jobs to workers and records results",
    Skill(id="route", name="route", description="route jobs to workers"),
)


app.steps["worker"].add(lifecycle_step(DISTRIBUTOR, build_distributor_card, SharedStateHooks()))
