"""Metrics: process counters, multiprocess files, the Redis collector and the endpoint."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY, generate_latest
from redis import Redis

from project.core import metrics
from project.core.constants import KEY_AGENT_CARDS, KEY_AGENT_DEAD, KEY_JOBS_COUNT, KEY_JOBS_OPEN
from project.core.metrics import (
    MultiProcessFilesCollector,
    RedisStateCollector,
    metrics_registry,
    serve_metrics,
)
from project.core.models import AgentCard
from project.local.embedded_redis import free_port

pytestmark = pytest.mark.timeout(60)


def _samples(collector: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in collector.collect()
        for s in family.samples
    }


def test_counters_count_in_this_process() -> None:
    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = value("agents_envelopes_signed_total", type="EVENT")
    metrics.count_signed("EVENT")
    metrics.count_signed("EVENT")
    assert value("agents_envelopes_signed_total", type="EVENT") == before + 2
    before = value("agents_envelopes_refused_total", reason="replay", task="t")
    metrics.count_refused("replay", "t")
    assert value("agents_envelopes_refused_total", reason="replay", task="t") == before + 1
    before = value("agents_lease_failures_total", lease="l", op="renew")
    metrics.count_lease_failure("l", "renew")
    assert value("agents_lease_failures_total", lease="l", op="renew") == before + 1
    before = value("agents_shared_state_conflicts_total", tier="coordinator")
    metrics.count_conflict("coordinator")
    assert value("agents_shared_state_conflicts_total", tier="coordinator") == before + 1
    before = value("agents_hop_seconds_count", tier="worker", task="worker.execute", outcome="ok")
    metrics.observe_hop("worker.execute", 0.02, "ok")
    assert (
        value("agents_hop_seconds_count", tier="worker", task="worker.execute", outcome="ok")
        == before + 1
    )


def test_signing_and_verifying_are_counted() -> None:
    from support.envelopes import bare_envelope

    from project.core.a2a.envelope import Keyring, MessageType, Signer, verify

    keyring = Keyring({"k": b"s" * 32})
    signed_before = REGISTRY.get_sample_value("agents_envelopes_signed_total", {"type": "ACK"})
    verified_before = REGISTRY.get_sample_value("agents_envelopes_verified_total", {"type": "ACK"})
    envelope = bare_envelope(Signer(keyring, ttl_s=60), MessageType.ACK)
    verify(envelope.to_wire(), keyring, max_bytes=1024)
    assert (
        REGISTRY.get_sample_value("agents_envelopes_signed_total", {"type": "ACK"})
        == (signed_before or 0) + 1
    )
    assert (
        REGISTRY.get_sample_value("agents_envelopes_verified_total", {"type": "ACK"})
        == (verified_before or 0) + 1
    )


def test_multiprocess_files_are_summed_across_processes_and_folders(tmp_path: Path) -> None:
    script = (
        "from project.core import metrics\n"
        "metrics.count_signed('REQUEST')\n"
        "metrics.observe_hop('distributor.assign', 0.01, 'ok')\n"
    )
    folders = [tmp_path / "a", tmp_path / "b"]
    for folder in [*folders, folders[0]]:  # two processes in a, one in b
        env = {**os.environ, metrics.MULTIPROC_ENV: str(folder)}
        subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=60)
    assert folders[0].is_dir()  # created by the metrics module itself
    samples = _samples(MultiProcessFilesCollector(folders))
    assert samples[("agents_envelopes_signed_total", (("type", "REQUEST"),))] == 3
    hop = (("outcome", "ok"), ("task", "distributor.assign"), ("tier", "distributor"))
    assert samples[("agents_hop_seconds_count", hop)] == 3
    one = _samples(MultiProcessFilesCollector(folders[1:]))
    assert one[("agents_envelopes_signed_total", (("type", "REQUEST"),))] == 1


def _card(agent_id: str, tier: str) -> AgentCard:
    return AgentCard(
        name=agent_id,
        description="",
        version="0",
        url=f"celery://worker.{agent_id}",
        skills=[],
        id=agent_id,
        tier=tier,
        queue=f"worker.{agent_id}" if tier == "worker" else tier,
    )


def test_redis_collector_reads_cluster_figures(redis_client: Redis) -> None:
    redis_client.hset(KEY_JOBS_COUNT, mapping={"PENDING": 5, "COMPLETED": 4, "FAILED": 1})
    redis_client.zadd(KEY_JOBS_OPEN, {"j1": 1})
    redis_client.hset("stats:jobs", mapping={"rerouted": 2, "resent_stuck": 1})
    redis_client.hset("stats:a2a:refused", mapping={"bad_signature": 3})
    redis_client.hset("stats:shared_state", mapping={"writes": 9, "conflicts": 4})
    for agent_id, tier in (("wx", "worker"), ("wy", "worker"), ("coordinator@h", "coordinator")):
        redis_client.hset(KEY_AGENT_CARDS, agent_id, _card(agent_id, tier).model_dump_json())
    redis_client.sadd(KEY_AGENT_DEAD, "wy")
    redis_client.rpush("worker.wx", "m1", "m2")
    redis_client.rpush("worker.wx:3", "m3")
    redis_client.rpush("worker.wy:9", "m4")
    redis_client.rpush("coordinator", "m5")

    samples = _samples(RedisStateCollector(redis_client))
    assert samples[("agents_redis_up", ())] == 1
    assert samples[("agents_jobs_total", (("status", "COMPLETED"),))] == 4
    assert samples[("agents_jobs_total", (("status", "FAILED"),))] == 1
    assert samples[("agents_jobs_open", ())] == 1
    assert samples[("agents_reroutes_total", (("reason", "reroute"),))] == 2
    assert samples[("agents_reroutes_total", (("reason", "stuck"),))] == 1
    assert samples[("agents_refusals_recorded_total", (("reason", "bad_signature"),))] == 3
    assert samples[("agents_shared_state_conflicts_recorded_total", ())] == 4
    assert samples[("agents_registered", (("state", "dead"), ("tier", "worker")))] == 1
    assert samples[("agents_registered", (("state", "registered"), ("tier", "worker")))] == 1

    def depth(queue: str, priority: int) -> float:
        return samples[("agents_queue_depth", (("priority", str(priority)), ("queue", queue)))]

    assert depth("worker.wx", 0) == 2
    assert depth("worker.wx", 3) == 1
    assert depth("worker.wx", 6) == 0
    assert depth("worker.wy", 9) == 1
    assert depth("coordinator", 0) == 1
    assert depth("distributor", 0) == 0


def test_redis_collector_answers_when_redis_is_down() -> None:
    dead = metrics.scrape_client(f"redis://127.0.0.1:{free_port()}/0")
    samples = _samples(RedisStateCollector(dead))
    assert samples == {("agents_redis_up", ()): 0}


def test_endpoint_serves_process_and_cluster_figures(redis_client: Redis) -> None:
    redis_client.hset(KEY_JOBS_COUNT, "COMPLETED", 7)
    metrics.count_signed("RESPONSE")
    port = free_port()
    server, thread = serve_metrics(port, addr="127.0.0.1", redis=redis_client)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            text = reply.read().decode()
    finally:
        server.shutdown()
        thread.join(timeout=10)
    assert 'agents_jobs_total{status="COMPLETED"} 7.0' in text
    assert 'agents_envelopes_signed_total{type="RESPONSE"}' in text
    assert "agents_queue_depth" in text


def test_agent_endpoint_is_off_without_a_port() -> None:
    assert metrics.start_agent_metrics(None) is False


def test_registry_without_multiprocess_folder_is_this_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(metrics.MULTIPROC_ENV, raising=False)
    text = generate_latest(metrics_registry()).decode()
    assert "agents_envelopes_signed_total" in text
