"""The worker tier's Celery task (queue ``worker.<id>``) and its agent bootstep."""

from __future__ import annotations

from typing import Any

from celery.exceptions import Ignore, TimeLimitExceeded

from project.core.celery_app import app
from project.core.constants import DISTRIBUTOR_QUEUE, TASK_COMPLETE, TASK_EXECUTE
from project.core.errors import A2AError
from project.core.hops import Hop, timed_hop
from project.core.runtime import get_runtime
from project.worker.execution import execute_work_order, time_limit_report


class ExecuteTask(app.Task):  # type: ignore[misc]
    """The work-order task: a run killed at its hard time limit is still answered."""

    def on_failure(self, exc: Any, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        """Celery calls this in the worker's main process when it kills a run at its hard
        time limit (the run ignored the soft one): the job fails with JobTimeLimitError,
        as if the run had answered, instead of waiting for the health check."""
        if not isinstance(exc, TimeLimitExceeded) or not args:
            return
        response = time_limit_report(get_runtime(), args[0])
        if response is not None:
            app.send_task(TASK_COMPLETE, args=[response], queue=DISTRIBUTOR_QUEUE)


@app.task(
    name=TASK_EXECUTE,
    base=ExecuteTask,
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
    rt = get_runtime()
    with timed_hop(rt, Hop.EXECUTE, TASK_EXECUTE):
        response = execute_work_order(rt, envelope)
    if response is None:
        raise Ignore()  # a stale order: dropped, no callback
    return response


# By name: the agent (and what only agents need) loads in worker processes alone.
app.steps["worker"].add("project.worker.bootstep:WorkerStep")
