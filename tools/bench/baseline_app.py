"""The benchmark's baseline: a bare Celery canvas with the same hops as ours, each a no-op.

``submit`` (queue ``bq.coordinator``: the task the client calls and whose
AsyncResult it waits on) sends ``assign`` to ``bq.distributor``, which sends
``execute`` to one worker queue ``bq.worker.<n>`` (round robin) with ``complete``
(on ``bq.distributor``) as its link callback; ``complete`` stores the result under
the id the client holds. No signatures, no job records, no graphs: the least a
user could do with Celery itself for the same flow. The client sends ``submit``
with ``ignore_result`` (its result is stored by ``complete``), as ours does.
Four Celery tasks per job, as ours (whose final EVENT rides on Redis pub/sub).

This module deliberately imports nothing from ``project`` (importing any part of
it loads every tier), so a baseline worker process carries Celery only. It gets
our exact Celery settings from the benchmark, as JSON in ``BENCH_BASELINE_CONFIG``
(:func:`project.core.celery_app.config.celery_config` without queues, routes and
beat), and its worker queues from ``BENCH_WORKER_QUEUES`` (comma separated).
Run by ``tools.bench.bench`` as ``celery -A baseline_app worker -Q ...`` with
this folder on ``PYTHONPATH``.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
from typing import Any

from celery import Celery, signature, states
from celery.exceptions import Ignore
from kombu import Queue

QUEUE_COORDINATOR = "bq.coordinator"
QUEUE_DISTRIBUTOR = "bq.distributor"
QUEUE_WORKER_PREFIX = "bq.worker."
TASK_SUBMIT = "bench.baseline.submit"
TASK_ASSIGN = "bench.baseline.assign"
TASK_EXECUTE = "bench.baseline.execute"
TASK_COMPLETE = "bench.baseline.complete"
CONFIG_ENV = "BENCH_BASELINE_CONFIG"
WORKER_QUEUES_ENV = "BENCH_WORKER_QUEUES"


def _config() -> dict[str, Any]:
    config: dict[str, Any] = json.loads(os.environ[CONFIG_ENV])
    config.update(
        task_default_queue=QUEUE_COORDINATOR,
        task_queues=[Queue(QUEUE_COORDINATOR), Queue(QUEUE_DISTRIBUTOR)],
        task_routes={
            TASK_SUBMIT: {"queue": QUEUE_COORDINATOR},
            TASK_ASSIGN: {"queue": QUEUE_DISTRIBUTOR},
            TASK_COMPLETE: {"queue": QUEUE_DISTRIBUTOR},
        },
        beat_schedule={},
    )
    return config


app = Celery("baseline_app", set_as_current=False)
app.add_defaults(_config)  # read when the worker first needs its configuration


class _WorkerQueues:
    """Round robin over the worker queues, the baseline's whole routing strategy."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: tuple[str, ...] = ()
        self._turns = itertools.count()

    def next(self) -> str:
        with self._lock:
            if not self._queues:
                names = os.environ.get(WORKER_QUEUES_ENV, f"{QUEUE_WORKER_PREFIX}1")
                self._queues = tuple(q.strip() for q in names.split(",") if q.strip())
            return self._queues[next(self._turns) % len(self._queues)]


_workers = _WorkerQueues()


@app.task(name=TASK_SUBMIT, bind=True)
def submit(self: Any, payload: dict[str, Any]) -> None:
    """Coordinator hop: send the job on; its result is stored later under this task's id."""
    app.send_task(TASK_ASSIGN, args=[self.request.id, payload], queue=QUEUE_DISTRIBUTOR)
    if not self.request.ignore_result:
        raise Ignore()  # sent without ignore_result: keep None out of the job's result


@app.task(name=TASK_ASSIGN, ignore_result=True)
def assign(job_id: str, payload: dict[str, Any]) -> None:
    """Distributor hop: pick a worker queue, send the job with the callback linked."""
    callback = signature(TASK_COMPLETE, queue=QUEUE_DISTRIBUTOR, app=app)
    app.send_task(TASK_EXECUTE, args=[job_id, payload], queue=_workers.next(), link=callback)


@app.task(name=TASK_EXECUTE, ignore_result=True)
def execute(job_id: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Worker hop: the no-op handler; its return value goes to the callback."""
    return {"job_id": job_id, "result": payload.get("echo")}


@app.task(name=TASK_COMPLETE, ignore_result=True)
def complete(report: dict[str, Any]) -> None:
    """Callback hop: store the job's result where the client's AsyncResult finds it."""
    app.backend.store_result(report["job_id"], {"result": report["result"]}, states.SUCCESS)
