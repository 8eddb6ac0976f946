"""A guard around one kombu race seen when Redis restarts.

When the broker connection drops and comes back, work still in flight on the
old, closed channel (acknowledging a finished task, restoring delivered
messages) asks that channel for connection parameters. Its connection is gone,
so kombu raises ``AttributeError`` (``'NoneType' object has no attribute
'client'`` / ``'hostname'``, cf. celery/kombu#970 and celery/celery#10205).
Celery treats that as unrecoverable: the worker stops consuming and shuts down
instead of reconnecting.

The guard turns it into what it is, a broker connection error, which Celery
and kombu already handle: the ack is logged as failed and the message stays in
kombu's ``unacked`` hash, from where the visibility timeout (or, for tier
messages, the coordinator's health check) brings it back. A second delivery is
harmless here: envelopes carry job epochs and replay markers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError

_original_connparams: Callable[..., Any] = kombu_redis.Channel._connparams


def _connparams(self: Any, asynchronous: bool = False) -> Any:
    connection = self.connection
    if connection is None or connection.client is None:
        raise RedisConnectionError("broker channel is closed (its connection was lost)")
    return _original_connparams(self, asynchronous=asynchronous)


def apply() -> None:
    """Install the guard (idempotent)."""
    kombu_redis.Channel._connparams = _connparams  # type: ignore[method-assign]
