"""A gateway in a thread of the test process: uvicorn on a free port, the fake job system,
task records in the scratch database (15)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import uvicorn
from redis import Redis

from project.core.settings import Settings
from project.gateway import Gateway, create_app
from project.gateway.jobs import Threads
from project.gateway.store import TaskRecords
from project.local.embedded_redis import free_port
from tests.gateway.fakes import FakeJobs

TOKENS = "alice:alice-token-0123456789,bob:bob-token-0123456789ab,alice:alice-second-token-000"
ALICE = "alice-token-0123456789"
BOB = "bob-token-0123456789ab"


@dataclass
class RunningGateway:
    url: str
    gateway: Gateway
    jobs: FakeJobs
    redis: Redis


def gateway_settings(port: int, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "gateway_host": "127.0.0.1",
        "gateway_port": port,
        "gateway_tokens": TOKENS,
        "gateway_default_skill": "echo",
        "gateway_max_body_bytes": 64 * 1024,
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


@contextmanager
def serving(jobs: FakeJobs, redis_client: Redis) -> Iterator[RunningGateway]:
    """A gateway replica on ``jobs`` and ``redis_client``, served by uvicorn in a thread."""
    port = free_port()
    settings = gateway_settings(port)
    gateway = create_app(
        settings,
        jobs=jobs,
        records=TaskRecords(redis_client, ttl_s=3600),
        threads=Threads(short_calls=8),
    )
    server = uvicorn.Server(
        uvicorn.Config(gateway.app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name="gateway", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the gateway did not start")
        time.sleep(0.02)
    try:
        yield RunningGateway(f"http://127.0.0.1:{port}", gateway, jobs, redis_client)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def running_gateway(redis_client: Redis) -> Iterator[RunningGateway]:
    """The gateway on a free port, served by uvicorn in a thread, until the test ends."""
    with serving(FakeJobs(), redis_client) as running:
        yield running


@pytest.fixture
def second_replica(running_gateway: RunningGateway) -> Iterator[RunningGateway]:
    """Another replica beside ``running_gateway``: the same job system and Redis."""
    with serving(running_gateway.jobs, running_gateway.redis) as running:
        yield running
