"""Two small fixes to kombu's Redis transport, installed by :func:`apply`.

**One client per channel.** kombu builds a new ``redis.Redis`` object (sharing the
channel's connection pool) for every synchronous broker operation: each publish,
ack and restore. With redis-py 8 that construction was ~7% of all agent CPU in
the benchmark's profile. A client on a pool is thread-safe and holds no state
of its own, so one per channel pool is reused; a new pool (after a reconnect)
gets a new client.

**A guard around one race seen when Redis restarts.**

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
_original_create_client: Callable[..., Any] = kombu_redis.Channel._create_client
_CLIENT_ATTR = "_agents_sync_client"


def _create_client(self: Any, asynchronous: bool = False) -> Any:
    if asynchronous:
        return _original_create_client(self, asynchronous=True)
    pool = self.pool
    cached = self.__dict__.get(_CLIENT_ATTR)
    if cached is not None and cached[0] is pool:
        return cached[1]
    client = _original_create_client(self, asynchronous=False)
    self.__dict__[_CLIENT_ATTR] = (pool, client)
    return client


def _connparams(self: Any, asynchronous: bool = False) -> Any:
    connection = self.connection
    if connection is None or connection.client is None:
        raise RedisConnectionError("broker channel is closed (its connection was lost)")
    return _original_connparams(self, asynchronous=asynchronous)


def apply() -> None:
    """Install both fixes (idempotent)."""
    kombu_redis.Channel._connparams = _connparams  # type: ignore[method-assign]
    kombu_redis.Channel._create_client = _create_client  # type: ignore[method-assign]
