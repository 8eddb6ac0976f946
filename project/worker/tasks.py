"""Celery task of the worker tier: ``project.worker.execute`` on queue ``worker.<id>``."""

from __future__ import annotations

from typing import Any

from celery.exceptions import Ignore

from project.core.celery_app import app
from project.core.constants import TASK_EXECUTE
from project.core.errors import A2AError
from project.core.graph import run_guarded_hop
from project.worker.execution import EXECUTE_GRAPH


@app.task(
    name=TASK_EXECUTE,
    bind=True,
    ignore_result=True,
    store_errors_even_if_ignored=True,
    throws=(A2AError,),
    # The return value is the signed RESPONSE with the job's result: logs and the
    # task-succeeded event show only its start, not the result.
    resultrepr_maxsize=96,
)
def execute(self: Any, envelope: Any) -> Any:
    """Run a signed work order; return the signed RESPONSE (sent on as the link callback)."""
    state = run_guarded_hop(EXECUTE_GRAPH, envelope, task_name=TASK_EXECUTE)
    if state.get("reply") is None:
        raise Ignore()  # a stale order: dropped, no callback
    return state["reply"]
