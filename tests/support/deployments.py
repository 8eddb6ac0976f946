"""Deployments of their own for test modules and classes, on a database of their own."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from celery import Celery
from celery.result import AsyncResult
from conftest import redis_url, start_deployment
from redis import Redis

from project.core.celery_app.config import celery_config
from project.core.models import JobStatus
from project.core.settings import Settings
from project.core.state.connections import connect_redis
from project.core.state.jobs import JobStore
from project.core.state.registry import AgentRegistry
from project.local.deployment import LocalDeployment


@contextmanager
def deployment_on(db: int, log_dir: Path, **options: Any) -> Iterator[LocalDeployment]:
    """Flush database ``db``, start a deployment on it and stop it on the way out.

    Args:
        db: The session redis-server's database the deployment uses (flushed first).
        log_dir: Where its processes write their logs.
        **options: Passed on to :func:`conftest.start_deployment` (``services``, env...).
    """
    connect_redis(redis_url(db)).flushdb()
    deployment = start_deployment(log_dir, db=db, **options)
    try:
        yield deployment
    finally:
        deployment.stop()


class DeploymentClient:
    """A running deployment with a job store, a registry and a Celery client on its database.

    Args:
        deployment: The running deployment.
        db: The session redis-server's database it uses.
        client_name: The Celery client's main name.
        url: The deployment's Redis, where it is not the session's (``db`` is then unused).
    """

    def __init__(
        self, deployment: LocalDeployment, db: int, client_name: str, *, url: str | None = None
    ) -> None:
        url = url or redis_url(db)
        self.deployment = deployment
        self.redis: Redis = connect_redis(url)
        self.jobs = JobStore(self.redis, result_ttl_s=3600)
        self.registry = AgentRegistry(self.redis)
        self.client = Celery(client_name, set_as_current=False)
        self.client.conf.update(celery_config(Settings(redis_url=url)))

    def completed(self, results: list[AsyncResult], timeout_s: float) -> list[Any]:
        """Each job's result, every job COMPLETED; on a timeout, print the unfinished ones."""
        try:
            values = [result.get(timeout=timeout_s) for result in results]
        except Exception:
            for result in results:
                record = self.jobs.get(result.id)
                if record is None or not record.status.is_final:
                    print("UNFINISHED", result.id, record, self.jobs.chain(result.id))
            raise
        for result in results:
            record = self.jobs.get(result.id)
            assert record is not None and record.status is JobStatus.COMPLETED, result.id
        return values
