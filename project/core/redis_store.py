"""Redis connections for the shared-state store, resilient to a Redis restart."""

from __future__ import annotations

from redis import Redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry


def connect_redis(url: str) -> Redis:
    """Return a client that retries through a short Redis outage (restart, failover).

    Commands retry with exponential backoff for about 30 s before the error surfaces.
    redis-py pools are fork-safe: a child process opens its own connections.
    """
    return Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=5,
        socket_timeout=30,
        socket_keepalive=True,
        health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=20),
        retry_on_error=[RedisConnectionError, RedisTimeoutError, ConnectionResetError],
    )
