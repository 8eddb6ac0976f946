"""A Coordinator -> Distributor -> Worker agent system on Celery and Redis.

``celery -A project ...`` finds the app here. Apps submit work with::

    from project import submit_task
    result = submit_task.delay("compute", {"operation": "sum", "values": [1, 2, 3]})
    result.get(timeout=10)["result"]  # 6

Importing this package loads what submitting needs; worker processes import each
tier's tasks at start (the app's ``include``).
"""

from project.client import submit_many
from project.coordinator.tasks import submit_task
from project.core.celery_app import app
from project.core.errors import (
    A2AError,
    AgentsError,
    HandlerError,
    InvalidJobError,
    InvalidPayloadError,
    JobAbandonedError,
    JobError,
    NoEligibleWorkerError,
    UnknownTaskTypeError,
    WriteRefusedError,
)

celery = app

__all__ = [
    "A2AError",
    "AgentsError",
    "HandlerError",
    "InvalidJobError",
    "InvalidPayloadError",
    "JobAbandonedError",
    "JobError",
    "NoEligibleWorkerError",
    "UnknownTaskTypeError",
    "WriteRefusedError",
    "app",
    "celery",
    "submit_many",
    "submit_task",
]
