"""A Coordinator -> Distributor -> Worker agent system on Celery and Redis.

``celery -A project ...`` finds the app here. Apps submit work with::

    from project import submit_task
    result = submit_task.delay("compute", {"operation": "sum", "values": [1, 2, 3]})
    result.get(timeout=10)["result"]  # 6
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
)

# Register every tier's tasks and bootsteps on the app.
from project.distributor import tasks as _distributor_tasks  # noqa: F401
from project.ops import flower as _flower  # noqa: F401  (Flower auth from settings)
from project.worker import lifecycle as _worker_lifecycle  # noqa: F401
from project.worker import tasks as _worker_tasks  # noqa: F401

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
    "app",
    "submit_many",
    "submit_task",
]
