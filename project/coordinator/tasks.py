"""The coordinator tier's Celery tasks (queue ``coordinator``) and its agent bootstep."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from celery.exceptions import Ignore
from celery.utils import uuid

from project.coordinator.intake import send_resumed, signed_submit, take_in
from project.core.celery_app import app
from project.core.constants import TASK_HEALTH_CHECK, TASK_RESUME, TASK_SUBMIT
from project.core.errors import A2AError, JobError
from project.core.hops import Hop, timed_hop
from project.core.models import Priority
from project.core.runtime import get_runtime
from project.core.submits import publish_recorded, record_submits


class SubmitTask(app.Task):  # type: ignore[misc]
    """The app-facing task: remembers each submit call until the coordinator records it."""

    def apply_async(
        self,
        args: Any = None,
        kwargs: Any = None,
        task_id: str | None = None,
        **options: Any,
    ) -> Any:
        """Publish a submit, after noting it as an intent the health check can re-send.

        Sent with ``ignore_result`` (see :mod:`project.core.submits`): the job's
        result is stored under the same id by the distributor, and the returned
        AsyncResult waits for it.

        Raises:
            WriteRefusedError: Redis refused to record the submit (it is full, or a
                read-only replica): nothing was submitted.
        """
        task_id = task_id or uuid()
        record_submits(
            get_runtime().jobs,
            {task_id: {"args": list(args or ()), "kwargs": dict(kwargs or {})}},
        )
        options["ignore_result"] = True

        def publish() -> Any:
            result = super(SubmitTask, self).apply_async(args, kwargs, task_id=task_id, **options)
            result.ignored = False
            return result

        return publish_recorded(self.app, task_id, publish)


@app.task(
    name=TASK_SUBMIT,
    bind=True,
    base=SubmitTask,
    store_errors_even_if_ignored=True,
    throws=(JobError, A2AError),
)
def submit_task(
    self: Any,
    task_type: str | None = None,
    payload: dict[str, Any] | None = None,
    priority: str = Priority.NORMAL.value,
    requirements: dict[str, Any] | None = None,
    deadline_s: float | None = None,
    input_timeout_s: float | None = None,
    a2a_message: dict[str, Any] | None = None,
    owner: str | None = None,
    envelope: dict[str, Any] | None = None,
) -> None:
    """Submit a job. The returned AsyncResult's ``.get()`` gives the worker's result.

    Args:
        task_type: a task type some worker offers (``compute``, ``data_processing``,
            ``generic``, or one an app registered).
        payload: the job's input, a JSON object.
        priority: ``urgent``, ``high``, ``normal`` or ``low``.
        requirements: ``{"tags": [...], "worker_ids": [...]}`` a worker must meet.
        deadline_s: how long the job may wait for an eligible worker.
        input_timeout_s: how long an agent may wait for input (``input_required``).
        a2a_message: the A2A message that started the job (the gateway's), JSON form.
        owner: who submits it (``list_jobs(owner)`` finds it).
        envelope: instead of the arguments above, an agent's signed SubmitRequest
            (``project.submit_signed``: the gateway's submits).

    Raises (from ``.get()``): UnknownTaskTypeError, InvalidJobError,
    InvalidPayloadError, HandlerError, NoEligibleWorkerError, JobAbandonedError,
    JobCanceledError, InputTimeoutError, JobTimeLimitError, JobRejectedError.
    """
    rt = get_runtime()
    spec: dict[str, Any] = {
        "task_type": task_type,
        "payload": payload,
        "priority": priority,
        "requirements": requirements or {},
        "deadline_s": deadline_s,
        "input_timeout_s": input_timeout_s,
        "a2a_message": a2a_message,
        "owner": owner,
    }
    try:
        with timed_hop(rt, Hop.SUBMIT, TASK_SUBMIT):
            parent = None
            if envelope is not None:
                spec, parent = signed_submit(rt, envelope, self.request.id)
            take_in(rt, spec, self.request.id, parent=parent)
    except (JobError, A2AError):
        rt.jobs.forget_intent(self.request.id)  # answered: the error is the result
        raise
    # The result is stored under this task's id by the distributor, later. Our
    # clients send with ignore_result; a raw send_task without it must not have
    # this task's None stored as the job's result.
    if not self.request.ignore_result:
        raise Ignore()


@app.task(name=TASK_RESUME, ignore_result=True, throws=(A2AError,))
def resume(job_id: str, envelope: dict[str, Any] | None = None) -> bool:
    """Send a resumed agent's job (``resume_job``) on to the distributor, signed; with
    ``envelope``, an agent's signed ResumeRequest for it (the gateway's)."""
    rt = get_runtime()
    with timed_hop(rt, Hop.RESUME, TASK_RESUME):
        return send_resumed(rt, job_id, envelope)


@app.task(name=TASK_HEALTH_CHECK, ignore_result=True)
def health_check() -> dict[str, Any]:
    """Beat-driven supervisor cycle: mark silent agents dead, re-route and re-send jobs."""
    # Imported here: the graph engine loads in the coordinator that runs the cycle,
    # not in every app that imports ``project`` to submit a job.
    from project.coordinator.supervisor import run_supervisor_cycle

    return asdict(run_supervisor_cycle(get_runtime()))


# By name: the agent (and what only agents need) loads in worker processes alone.
app.steps["worker"].add("project.coordinator.bootstep:CoordinatorStep")
