"""Deployments of their own for test modules and classes, on a database of their own."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from conftest import redis_url, start_deployment

from project.core.state.connections import connect_redis
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
