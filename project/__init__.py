"""A Coordinator -> Distributor -> Worker agent system on Celery and Redis.

``celery -A project ...`` finds the app here. Apps submit work with::

    from project import submit_task
    result = submit_task.delay("compute", {"operation": "sum", "values": [1, 2, 3]})
    result.get(timeout=10)["result"]  # 6

Importing this package loads what submitting needs; worker processes import each
tier's tasks at start (the app's ``include``).
"""

from project.client import (
    cancel_job,
    get_job,
    job_events,
    list_jobs,
    offered_skills,
    resume_job,
    submit_many,
    submit_signed,
)
from project.coordinator.tasks import submit_task
from project.core.celery_app import app
from project.core.control import CancelOutcome, Interrupt, JobView
from project.core.errors import (
    A2AError,
    AgentsError,
    HandlerError,
    InputTimeoutError,
    InvalidJobError,
    InvalidPayloadError,
    JobAbandonedError,
    JobCanceledError,
    JobError,
    JobNotFoundError,
    JobNotWaitingError,
    JobRejectedError,
    JobTimeLimitError,
    NoEligibleWorkerError,
    UnknownTaskTypeError,
    WriteRefusedError,
)
from project.core.state.joblog import JobLogEvent

celery = app

__all__ = [
    "A2AError",
    "AgentsError",
    "CancelOutcome",
    "HandlerError",
    "InputTimeoutError",
    "Interrupt",
    "InvalidJobError",
    "InvalidPayloadError",
    "JobAbandonedError",
    "JobCanceledError",
    "JobError",
    "JobLogEvent",
    "JobNotFoundError",
    "JobNotWaitingError",
    "JobRejectedError",
    "JobTimeLimitError",
    "JobView",
    "NoEligibleWorkerError",
    "UnknownTaskTypeError",
    "WriteRefusedError",
    "app",
    "cancel_job",
    "celery",
    "get_job",
    "job_events",
    "list_jobs",
    "offered_skills",
    "resume_job",
    "submit_many",
    "submit_signed",
    "submit_task",
]
