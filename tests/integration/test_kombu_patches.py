"""kombu's Redis channel with our fixes, against a real redis-server."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import redis_url
from kombu import Connection, Exchange, Queue
from redis import Redis

from project.core.celery_app import kombu_patches
from project.local.embedded_redis import EmbeddedRedis

pytestmark = pytest.mark.integration


def test_one_sync_client_per_channel_pool(redis_server: EmbeddedRedis, redis_client: Redis) -> None:
    kombu_patches.apply()
    with Connection(redis_url(15)) as connection:
        channel = connection.default_channel
        first = channel._create_client()
        assert channel._create_client() is first
        # The async client (BRPOP, LISTEN) is still kombu's own, on its own pool.
        assert channel._create_client(asynchronous=True) is not first
        # Publish and consume through the reused client: the broker path still works.
        queue = Queue("patch-check", Exchange("patch-check"), "patch-check")
        with connection.Producer() as producer:
            producer.publish(
                {"n": 1},
                exchange=queue.exchange,
                routing_key="patch-check",
                declare=[queue],
                serializer="json",
            )
        message = queue(channel).get(no_ack=False)
        assert message is not None and message.payload == {"n": 1}
        message.ack()
        assert channel._create_client() is first
        # A new pool (as after a reconnect) gets a new client bound to it.
        channel._pool = None
        fresh = channel._create_client()
        assert fresh is not first and fresh.connection_pool is channel.pool
    redis_client.delete("patch-check")


def _listening_channel(connection: Connection, received: list[Any]) -> Any:
    """A channel subscribed to a fanout queue, as a worker's remote control (pidbox) is."""
    channel = connection.channel()
    exchange = Exchange("patch-pidbox", type="fanout")
    Queue("w1.patch-pidbox", exchange, channel=channel).declare()
    channel.basic_consume(
        "w1.patch-pidbox", no_ack=True, callback=received.append, consumer_tag="patch"
    )
    channel.connection.cycle._register_LISTEN(channel)  # what the worker's event loop does
    deadline = time.monotonic() + 5
    while channel.subclient.connection.can_read(timeout=0.2):  # the SUBSCRIBE confirmation
        channel._receive()
        assert time.monotonic() < deadline
    return channel


def _publish(connection: Connection, body: dict[str, int]) -> None:
    with connection.Producer() as producer:
        producer.publish(body, exchange=Exchange("patch-pidbox", type="fanout"), declare=[])


def test_a_subscription_read_after_a_redis_restart_raises_instead_of_hanging(
    tmp_path: Path,
) -> None:
    """The worker's event loop must learn of the restart; before the fix it waited forever.

    Redis is back before the channel reads the end of its old subscription (what a
    worker whose main thread was starved across the outage sees). Unpatched, redis-py
    reconnects inside the read, does not subscribe again, and blocks for good.
    """
    kombu_patches.apply()
    server = EmbeddedRedis(tmp_path / "redis").start()
    received: list[Any] = []
    try:
        with Connection(server.url, transport_options={"retry_on_timeout": True}) as connection:
            channel = _listening_channel(connection, received)
            _publish(connection, {"n": 1})
            assert channel.subclient.connection.can_read(timeout=5)
            channel._receive()
            assert [m.payload for m in received] == [{"n": 1}]

            server.kill()
            server.start()
            outcome: list[object] = []
            reader = threading.Thread(
                target=lambda: outcome.append(_outcome_of(channel._receive)), daemon=True
            )
            reader.start()
            reader.join(timeout=10)
            assert not reader.is_alive(), "the subscription read hung after the restart"
            [error] = outcome
            assert isinstance(error, channel.connection_errors), error
            assert channel._in_listen is None  # the next tick subscribes again

            # A subscription closed under it is a lost connection too, not a quiet
            # reconnect (which would subscribe to nothing on a socket nobody polls).
            channel.subclient.connection.disconnect()
            with pytest.raises(channel.connection_errors):
                channel._receive()

            # What Celery does next: a new connection and channel, which hears again.
            with Connection(server.url) as fresh:
                channel = _listening_channel(fresh, received)
                _publish(fresh, {"n": 2})
                assert channel.subclient.connection.can_read(timeout=5)
                channel._receive()
            assert [m.payload for m in received] == [{"n": 1}, {"n": 2}]
    finally:
        server.stop()


def _outcome_of(call: Callable[[], object]) -> object:
    try:
        return call()
    except Exception as error:
        return error
