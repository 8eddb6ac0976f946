"""kombu's Redis channel with our fixes, against a real redis-server."""

from __future__ import annotations

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
