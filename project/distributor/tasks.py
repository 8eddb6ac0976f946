"""The distributor tier's Celery tasks (queue ``distributor``) and its agent bootstep."""

from __future__ import annotations

from typing import Any

from project.core.celery_app import app
from project.core.constants import TASK_ASSIGN, TASK_COMPLETE
from project.core.errors import A2AError
from project.core.hops import Hop, timed_hop
from project.core.runtime import get_runtime
from project.distributor.dispatch import Routing, assign_job, record_result

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
    rt = get_runtime()
    with timed_hop(rt, Hop.ASSIGN, TASK_ASSIGN):
        routing = assign_job(rt, envelope)
    if routing is Routing.WAIT:  # no eligible worker yet; again until the job's deadline
        raise self.retry(countdown=rt.settings.assign_retry_s)


@app.task(name=TASK_COMPLETE, **_HOP_OPTIONS)
def complete(self: Any, envelope: Any) -> None:
    """Record a worker's signed RESPONSE as the job's result (the link callback)."""
    rt = get_runtime()
    with timed_hop(rt, Hop.COMPLETE, TASK_COMPLETE):
        record_result(rt, envelope)


# By name: the agent (and what only agents need) loads in worker processes alone.
app.steps["worker"].add("project.distributor.bootstep:DistributorStep")
