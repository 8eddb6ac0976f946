"""Failover with Sentinel: a master, a replica and a Sentinel, all real redis-server processes.

The whole deployment (coordinator with beat, a distributor, two workers) and the
app run on a ``sentinel://`` URL. The master is SIGKILLed; the Sentinel promotes
the replica; every tier follows it without a restart and jobs go on completing.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.result import AsyncResult
from langgraph.types import Command
from redis import Redis
from support.parked_graph import parked_graph
from support.polling import wait_for

from project.client import submit_many
from project.core.celery_app.config import celery_config
from project.core.checkpoint import RedisSaver
from project.core.errors import ConfigurationError
from project.core.settings import Settings
from project.core.state.connections import celery_urls, connect_redis, parse_sentinel_url
from project.core.state.jobs import JobStore
from project.local.deployment import LocalDeployment
from project.local.embedded_redis import EmbeddedRedis, child_env, free_port, redis_server_binary
from project.local.topology import default_topology

MASTER = "agents"


# --- parsing (no server) -------------------------------------------------------------


def test_sentinel_url_is_parsed_and_given_to_celery_in_its_form() -> None:
    url = "sentinel://:p%40ss@s1:26379/3;sentinel://s2:26380?master_name=agents"
    target = parse_sentinel_url(url)
    assert target.sentinels == (("s1", 26379), ("s2", 26380))
    assert (target.master_name, target.db, target.password) == ("agents", 3, "p@ss")
    broker, options = celery_urls(url)
    assert broker == "sentinel://:p%40ss@s1:26379/3;sentinel://:p%40ss@s2:26380/3"
    assert options == {"master_name": "agents"}
    config = celery_config(Settings(redis_url=url))
    assert config["broker_url"] == config["result_backend"] == broker
    assert config["broker_transport_options"]["master_name"] == "agents"
    assert config["result_backend_transport_options"]["master_name"] == "agents"
    assert celery_urls("redis://h:1/0") == ("redis://h:1/0", {})


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("sentinel://s1:26379", "master_name"),
        ("sentinel://s1:26379;redis://s2:6379?master_name=a", "sentinel://"),
        ("sentinel://s1:notaport?master_name=a", "port"),
        ("sentinel://s1:26379/x?master_name=a", "database"),
    ],
)
def test_bad_sentinel_urls_are_refused_clearly(url: str, problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem):
        parse_sentinel_url(url)


# --- failover (real processes) -------------------------------------------------------


class SentinelSet:
    """A master, a replica and one Sentinel (quorum 1) watching them."""

    def __init__(self, root: Path) -> None:
        self.master = EmbeddedRedis(root / "master", appendonly=False).start()
        self.replica = EmbeddedRedis(
            root / "replica",
            appendonly=False,
            extra_args=("--replicaof", "127.0.0.1", str(self.master.port)),
        ).start()
        self.port = free_port()
        config = root / "sentinel.conf"
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {root}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {self.master.port} 1\n"
            f"sentinel down-after-milliseconds {MASTER} 1000\n"
            f"sentinel failover-timeout {MASTER} 4000\n"
        )
        self.process = subprocess.Popen(
            [redis_server_binary(), str(config), "--sentinel", "--logfile", str(root / "s.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.sentinel = Redis(port=self.port, decode_responses=True, socket_timeout=2)
        wait_for(
            lambda: (
                int(self.replica_info()["master_link_status"] == "up")
                and len(self.sentinel.sentinel_slaves(MASTER)) == 1
            ),  # type: ignore[no-untyped-call]
            30,
            "the replica to sync and the Sentinel to see it",
        )

    def replica_info(self) -> dict[str, str]:
        info: dict[str, str] = Redis(port=self.replica.port).info("replication")  # type: ignore[assignment]
        return {k: str(v) for k, v in info.items()}

    def master_port(self) -> int:
        host_port = self.sentinel.sentinel_get_master_addr_by_name(MASTER)  # type: ignore[no-untyped-call]
        return int(host_port[1])

    @property
    def url(self) -> str:
        return f"sentinel://127.0.0.1:{self.port}/0?master_name={MASTER}"

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(10)
        for server in (self.master, self.replica):
            server.stop()


@pytest.fixture
def sentinel_set(tmp_path: Path) -> Iterator[SentinelSet]:
    servers = SentinelSet(tmp_path / "redis")
    try:
        yield servers
    finally:
        servers.stop()


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_every_tier_follows_a_sentinel_failover(sentinel_set: SentinelSet, tmp_path: Path) -> None:
    url = sentinel_set.url
    deployment = LocalDeployment(
        default_topology(workers=("w1", "w2"), distributors=1, beat=True),
        env=child_env(AGENTS_REDIS_URL=url, AGENTS_STUCK_JOB_AFTER_S="4"),
        log_dir=tmp_path / "logs",
    )
    deployment.start()
    try:
        deployment.wait_ready(timeout_s=90)
        client = Celery("sentinel-client", set_as_current=False)
        client.conf.update(celery_config(Settings(redis_url=url)))
        store = JobStore(connect_redis(url), result_ttl_s=3600)

        def submit(first: int, count: int, sleep_s: float = 0.0) -> list[AsyncResult]:
            jobs = [
                {"task_type": "generic", "payload": {"echo": i, "sleep_s": sleep_s}}
                for i in range(first, first + count)
            ]
            return submit_many(jobs, celery_app=client, store=store)

        def run(first: int, count: int) -> list[int]:
            return [r.get(timeout=120)["result"] for r in submit(first, count)]

        assert run(0, 20) == list(range(20))
        old_master = sentinel_set.master_port()
        assert old_master == sentinel_set.master.port
        in_flight = submit(100, 30, sleep_s=0.05)
        wait_for(lambda: store.counts().get("COMPLETED", 0) >= 25, 30, "jobs in flight")
        sentinel_set.master.kill()
        killed_at = time.monotonic()
        promoted_s = wait_for(
            lambda: sentinel_set.master_port() == sentinel_set.replica.port,
            60,
            "the Sentinel to promote the replica",
        )
        assert run(20, 40) == list(range(20, 60))
        # Acknowledged before the kill and replicated: they complete on the new master.
        assert [r.get(timeout=120)["result"] for r in in_flight] == list(range(100, 130))
        print(
            f"\nsentinel failover: replica promoted {promoted_s:.2f}s after the kill; "
            f"40 new jobs done {time.monotonic() - killed_at:.2f}s after it"
        )
        for name, process in deployment.processes.items():
            assert process.poll() is None, f"{name} exited during the failover"
    finally:
        deployment.stop()


def test_cli_output_redacts_every_password_of_a_sentinel_url() -> None:
    from project.cli import _redact

    url = "sentinel://:pw1@s1:26379/0;sentinel://:pw1@s2:26379?master_name=a&sentinel_password=pw2"
    shown = _redact(url)
    assert "pw1" not in shown and "pw2" not in shown
    assert shown.count("***") == 3 and "s2:26379" in shown


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_agent_checkpoints_go_through_a_sentinel_url_and_outlive_a_failover(
    sentinel_set: SentinelSet,
) -> None:
    """The agents' checkpointer on a client from a sentinel:// URL (as workers make it):
    a graph parks at its interrupt, the master fails over, and the thread resumes from the
    checkpoint the replica took over."""
    client = connect_redis(sentinel_set.url)
    graph = parked_graph(RedisSaver(client))
    config: Any = {"configurable": {"thread_id": "sentinel-job"}}
    parked = graph.invoke({"n": 0}, config)
    assert parked["__interrupt__"][0].value == {"n": 1}
    old_master = sentinel_set.master_port()
    wait_for(
        lambda: (
            Redis(port=sentinel_set.replica.port).info("replication")["master_repl_offset"]
            >= Redis(port=old_master).info("replication")["master_repl_offset"]
        ),
        30,
        "the replica to have the checkpoint",
    )
    sentinel_set.master.stop()
    wait_for(lambda: sentinel_set.master_port() != old_master, 60, "the Sentinel to fail over")
    resumed = graph.invoke(Command(resume="yes"), config)
    assert resumed == {"n": 1, "answer": "yes"}
    client.close()
