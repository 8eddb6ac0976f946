"""Pub/sub notifications and the coordinator's view, against a real redis-server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import redis_url
from redis import Redis
from support.agents import agent_card
from support.polling import wait_for

from project.coordinator.view import CoordinatorView
from project.core.a2a.envelope import Envelope, Keyring, Signer
from project.core.models import JobSpec, JobStatus
from project.core.state.connections import connect_redis
from project.core.state.jobs import JobStore
from project.core.state.notifications import Subscriber
from project.core.state.registry import AgentRegistry
from project.local.embedded_redis import EmbeddedRedis

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SIGNER = Signer(Keyring({"test": b"k" * 32}), ttl_s=600)
SPEC = JobSpec(task_type="compute", payload={"operation": "sum", "values": [1]})


def request(job_id: str) -> Envelope:
    return SIGNER.request(sender="distributor", recipient="w1", payload={}, request_id=job_id)


class Collector:
    """Collects what a Subscriber hands on."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self.subscriptions = 0
        self.lock = threading.Lock()

    def on_message(self, channel: str, message: dict[str, Any]) -> None:
        with self.lock:
            self.messages.append((channel, message))

    def on_subscribed(self) -> None:
        with self.lock:
            self.subscriptions += 1

    def received(self, channel: str) -> list[dict[str, Any]]:
        with self.lock:
            return [m for c, m in self.messages if c == channel]


@pytest.fixture
def view(redis_client: Redis) -> Iterator[CoordinatorView]:
    running = CoordinatorView(redis_client, redis_url(15)).start()
    assert running.wait_synced(10)
    yield running
    running.stop()


def test_subscriber_hands_on_json_messages(redis_client: Redis) -> None:
    collected = Collector()
    subscriber = Subscriber(
        redis_url(15),
        ["test:a", "test:b"],
        collected.on_message,
        on_subscribed=collected.on_subscribed,
    ).start()
    try:
        assert subscriber.wait_subscribed(10)
        redis_client.publish("test:a", json.dumps({"n": 1}))
        redis_client.publish("test:b", "not json")
        redis_client.publish("test:b", json.dumps({"n": 2}))
        wait_for(lambda: len(collected.messages) == 2, 10, "two messages")
        assert collected.messages == [("test:a", {"n": 1}), ("test:b", {"n": 2})]
        assert collected.subscriptions == 1
    finally:
        subscriber.stop()


def test_subscriber_reconnects_after_a_redis_restart(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis").start()
    collected = Collector()
    subscriber = Subscriber(
        server.url, ["test:a"], collected.on_message, on_subscribed=collected.on_subscribed
    ).start()
    publisher = connect_redis(server.url)
    try:
        assert subscriber.wait_subscribed(10)
        publisher.publish("test:a", json.dumps({"before": True}))
        wait_for(lambda: len(collected.messages) == 1, 10, "the first message")

        server.restart()
        wait_for(lambda: collected.subscriptions == 2, 30, "the subscriber to resubscribe")
        assert subscriber.wait_subscribed(10)
        publisher.publish("test:a", json.dumps({"after": True}))
        wait_for(lambda: len(collected.messages) == 2, 10, "a message after the restart")
        assert collected.received("test:a") == [{"before": True}, {"after": True}]
        assert subscriber.reconnects == 1
    finally:
        subscriber.stop()
        publisher.close()
        server.stop()


def test_view_follows_job_transitions(redis_client: Redis, view: CoordinatorView) -> None:
    jobs = JobStore(redis_client, result_ttl_s=600)
    for job_id in ("a", "b", "c"):
        assert jobs.create(job_id, SPEC, deadline_ms=0)
    wait_for(lambda: view.jobs_by_status() == {"PENDING": 3}, 10, "three PENDING jobs")

    order = request("a")
    assigned = jobs.assign("a", expected_epoch=0, worker_id="w1", max_attempts=3, dispatch=order)
    assert assigned.kind == "ok"
    wait_for(lambda: view.jobs_by_status() == {"PENDING": 2, "ASSIGNED": 1}, 10, "a assigned")
    assert jobs.start("a", epoch=1, worker_id="w1", request=order, max_runs=3) == "run"
    wait_for(lambda: view.jobs_by_status() == {"PENDING": 2, "IN_PROGRESS": 1}, 10, "a in progress")
    assert jobs.finish("a", epoch=1, status=JobStatus.COMPLETED, result=1).kind == "recorded"
    failed = jobs.finish("b", epoch=0, status=JobStatus.FAILED, error={"type": "X"})
    assert failed.kind == "recorded"
    # A second result for a finished job changes nothing, and announces nothing.
    assert jobs.finish("a", epoch=1, status=JobStatus.FAILED).kind == "already"
    wait_for(
        lambda: view.jobs_by_status() == {"PENDING": 1, "COMPLETED": 1, "FAILED": 1},
        10,
        "a completed, b failed",
    )


def test_view_follows_agents(redis_client: Redis, view: CoordinatorView) -> None:
    registry = AgentRegistry(redis_client)
    registry.register(agent_card("w1"))
    registry.register(agent_card("w2"))
    registry.register(agent_card("d1", tier="distributor"))
    wait_for(lambda: view.agents_by_state() == {"alive": 3}, 10, "three live agents")
    registry.mark_dead("w1")
    wait_for(lambda: view.agents_by_state() == {"alive": 2, "dead": 1}, 10, "w1 dead")
    assert view.agent_states()["w1"] == "dead"
    assert registry.heartbeat("w1") is True
    registry.deregister("d1")
    wait_for(lambda: view.agent_states() == {"w1": "alive", "w2": "alive"}, 10, "w1 back, d1 gone")


def test_view_starts_from_the_state_already_in_redis(redis_client: Redis) -> None:
    jobs = JobStore(redis_client, result_ttl_s=600)
    registry = AgentRegistry(redis_client)
    for job_id in ("a", "b", "c"):
        jobs.create(job_id, SPEC, deadline_ms=0)
    jobs.assign("a", expected_epoch=0, worker_id="w1", max_attempts=3, dispatch=request("a"))
    jobs.finish("b", epoch=0, status=JobStatus.COMPLETED, result=1)
    registry.register(agent_card("w1"))
    registry.register(agent_card("w2"))
    registry.mark_dead("w2")

    late = CoordinatorView(redis_client, redis_url(15)).start()
    try:
        assert late.wait_synced(10)
        assert late.jobs_by_status() == {"ASSIGNED": 1, "COMPLETED": 1, "PENDING": 1}
        assert late.agent_states() == {"w1": "alive", "w2": "dead"}
    finally:
        late.stop()


def test_view_counts_each_change_once_while_changes_race_its_start(redis_client: Redis) -> None:
    jobs = JobStore(redis_client, result_ttl_s=600)
    total = 300
    stop = threading.Event()

    def create_jobs() -> None:
        for n in range(total):
            jobs.create(f"job-{n}", SPEC, deadline_ms=0)
        stop.set()

    creator = threading.Thread(target=create_jobs)
    creator.start()
    racing = CoordinatorView(redis_client, redis_url(15)).start()
    try:
        creator.join(timeout=60)
        assert stop.is_set()
        wait_for(lambda: racing.jobs_by_status() == {"PENDING": total}, 10, f"{total} jobs")
    finally:
        racing.stop()


def test_view_resyncs_after_a_redis_restart(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis").start()
    client = connect_redis(server.url)
    jobs = JobStore(client, result_ttl_s=600)
    jobs.create("before", SPEC, deadline_ms=0)
    view = CoordinatorView(client, server.url).start()
    try:
        assert view.wait_synced(10)
        assert view.jobs_by_status() == {"PENDING": 1}
        server.restart(kill=False)  # a clean stop: the AOF holds every write
        # Created while the view may still be disconnected: its announcement can be lost,
        # the full read after resubscribing must still count it.
        jobs.create("during", SPEC, deadline_ms=0)
        wait_for(lambda: view.resyncs >= 2, 30, "the view to resync")
        wait_for(lambda: view.jobs_by_status() == {"PENDING": 2}, 10, "both jobs")
        jobs.create("after", SPEC, deadline_ms=0)
        wait_for(lambda: view.jobs_by_status() == {"PENDING": 3}, 10, "three jobs")
    finally:
        view.stop()
        client.close()
        server.stop()
