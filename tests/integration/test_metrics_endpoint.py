"""Prometheus figures from real prefork agents after real jobs."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from project import submit_many
from project.core.metrics import serve_metrics
from project.core.state.connections import connect_redis
from project.local.deployment import LocalDeployment
from project.local.embedded_redis import child_env, free_port
from project.local.topology import worker_service

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=15) as reply:
        text = reply.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def run_jobs(count: int, **options: object) -> None:
    jobs = [
        {"task_type": "compute", "payload": {"operation": "sum", "values": [i, 1]}, **options}
        for i in range(count)
    ]
    results = submit_many(jobs)
    assert [r.get(timeout=60)["result"] for r in results] == [i + 1 for i in range(count)]


def test_agent_endpoint_counts_its_pool_processes(
    deployment: LocalDeployment, tmp_path: Path
) -> None:
    """A prefork worker with AGENTS_METRICS_PORT serves what its pool children counted."""
    port = free_port()
    extra = LocalDeployment(
        [worker_service("wm", concurrency=2)],
        env=child_env(AGENTS_METRICS_PORT=str(port)),
        log_dir=tmp_path,
    )
    extra.start()
    try:
        extra.wait_ready(timeout_s=90)
        run_jobs(8, requirements={"worker_ids": ["wm"]})
        samples = scrape(port)
    finally:
        extra.stop()
    assert total(samples, "agents_envelopes_verified_total", type="REQUEST") >= 8
    assert total(samples, "agents_envelopes_signed_total", type="RESPONSE") >= 8
    assert total(samples, "agents_hop_seconds_count", tier="worker", outcome="ok") >= 8
    assert total(samples, "agents_hop_seconds_sum", tier="worker") > 0
    # Cluster figures come from coordinator processes only.
    assert total(samples, "agents_jobs_total") == 0
    # The counting happened in pool children, not in the serving process.
    files = list((tmp_path / "metrics" / "wm").glob("*.db"))
    assert len({re.sub(r"\D", "", f.name) for f in files}) >= 2, files


def test_one_shot_endpoint_shows_every_tier_and_the_cluster(
    deployment: LocalDeployment,
) -> None:
    run_jobs(6)
    port = free_port()
    folders = [deployment.metrics_dir(name) for name in deployment.services]
    redis = connect_redis(deployment.env["AGENTS_REDIS_URL"])
    server, thread = serve_metrics(port, addr="127.0.0.1", redis=redis, multiproc_dirs=folders)
    try:
        samples = scrape(port)
    finally:
        server.shutdown()
        thread.join(timeout=10)
        redis.close()
    for tier in ("coordinator", "distributor", "worker"):
        assert total(samples, "agents_hop_seconds_count", tier=tier) >= 6, tier
    assert total(samples, "agents_envelopes_signed_total", type="REQUEST") >= 12
    assert total(samples, "agents_envelopes_verified_total") >= 18
    assert total(samples, "agents_jobs_total", status="COMPLETED") >= 6
    assert total(samples, "agents_redis_up") == 1
    for worker in ("w1", "w2", "w3"):
        assert (
            "agents_queue_depth",
            frozenset({("queue", f"worker.{worker}"), ("priority", "3")}),
        ) in samples
