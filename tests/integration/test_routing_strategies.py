"""Each routing strategy through real processes: where do the jobs actually land?

Every non-default strategy gets a deployment of its own on its own Redis database
(``AGENTS_ROUTING_STRATEGY`` set for every process), started once per test class
and stopped after it. The app side is a Celery client bound to that database with
the project's own configuration. Assignees are read back from the job records.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from celery import Celery
from celery.result import AsyncResult
from conftest import redis_url
from support.deployments import deployment_on

from project import NoEligibleWorkerError, submit_task
from project.core.celery_app.config import celery_config
from project.core.constants import TASK_SUBMIT
from project.core.models import AgentCard, JobStatus
from project.core.runtime import get_runtime
from project.core.settings import Settings
from project.core.state.connections import connect_redis
from project.core.state.jobs import JobStore
from project.core.state.registry import AgentRegistry
from project.local.deployment import LocalDeployment
from project.local.embedded_redis import EmbeddedRedis
from project.local.topology import Service, default_topology, worker_service

pytestmark = pytest.mark.integration

# One Redis database per strategy's deployment (db 0 is the session deployment).
DB_ROUND_ROBIN = 2
DB_CAPABILITY = 3
DB_WEIGHTED = 4
WORKERS = ("w1", "w2", "w3")
WEIGHTS = {"w1": 1, "w2": 1, "w3": 8}
GET_TIMEOUT_S = 60


class Cluster:
    """A running deployment on one database, and an app-side client bound to it."""

    def __init__(self, deployment: LocalDeployment, db: int) -> None:
        url = redis_url(db)
        self.deployment = deployment
        self.redis = connect_redis(url)
        self.jobs = JobStore(self.redis, result_ttl_s=3600)
        self.registry = AgentRegistry(self.redis)
        self.client = Celery(f"routing-client-db{db}", set_as_current=False)
        self.client.conf.update(celery_config(Settings(redis_url=url)))

    def submit(self, task_type: str, payload: dict[str, Any], **options: Any) -> AsyncResult:
        return self.client.send_task(TASK_SUBMIT, args=[task_type, payload], kwargs=options)

    def submit_many(self, count: int, **options: Any) -> list[AsyncResult]:
        with self.client.producer_or_acquire() as producer:
            return [
                self.client.send_task(
                    TASK_SUBMIT,
                    args=["compute", {"operation": "sum", "values": [i, 1]}],
                    kwargs=options,
                    producer=producer,
                )
                for i in range(count)
            ]

    def complete_all(self, results: Sequence[AsyncResult]) -> list[str]:
        """Wait for every job; check its result; return the assignee of each, in order."""
        for i, result in enumerate(results):
            assert result.get(timeout=GET_TIMEOUT_S)["result"] == i + 1
        return [self.assignee(result) for result in results]

    def assignee(self, result: AsyncResult) -> str:
        record = self.jobs.get(result.id)
        assert record is not None and record.status is JobStatus.COMPLETED
        assert record.epoch == 1 and record.attempts == 1
        return record.assignee

    def worker_cards(self) -> dict[str, AgentCard]:
        return {k: c for k, c in self.registry.cards().items() if c.tier == "worker"}

    def close(self) -> None:
        self.client.close()
        self.redis.close()


def tiers_with(*workers: Service) -> list[Service]:
    """Coordinator and one distributor (no beat), plus ``workers``."""
    return [*default_topology(workers=(), distributors=1, beat=False), *workers]


@dataclass(frozen=True)
class ClusterSetup:
    """The deployment a test class runs against (its ``SETUP``)."""

    strategy: str
    """``AGENTS_ROUTING_STRATEGY`` of every process."""
    db: int
    """The Redis database of the deployment (its own, flushed first)."""
    services: list[Service] | None = None
    """The processes; ``None``: the default topology."""


@pytest.fixture(scope="class")
def cluster(
    request: pytest.FixtureRequest,
    redis_server: EmbeddedRedis,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Cluster]:
    """The deployment of the test class's ``SETUP``, started once for the class."""
    setup: ClusterSetup = request.cls.SETUP
    with deployment_on(
        setup.db,
        tmp_path_factory.mktemp(setup.strategy),
        services=setup.services,
        AGENTS_ROUTING_STRATEGY=setup.strategy,
    ) as deployment:
        running = Cluster(deployment, setup.db)
        try:
            yield running
        finally:
            running.close()


# --- least_busy (the session deployment) -------------------------------------------


def test_least_busy_keeps_jobs_off_a_busy_worker(deployment: LocalDeployment) -> None:
    jobs = get_runtime().jobs
    busy = [
        submit_task.delay(
            "generic", {"echo": i, "sleep_s": 3.0}, requirements={"worker_ids": ["w1"]}
        )
        for i in range(3)
    ]
    deadline = time.monotonic() + 20
    while not all((r := jobs.get(b.id)) is not None and r.assignee == "w1" for b in busy):
        assert time.monotonic() < deadline, "the sleeping jobs were never assigned to w1"
        time.sleep(0.05)
    # w1 holds unfinished jobs for ~6 s (2 run at a time); each quick job is done
    # before the next is sent, so w2 and w3 are idle whenever one is routed.
    quick = []
    for i in range(4):
        result = submit_task.delay("compute", {"operation": "sum", "values": [i]})
        assert result.get(timeout=GET_TIMEOUT_S)["result"] == i
        quick.append(result)
    assignees = [record.assignee for record in (jobs.get(r.id) for r in quick) if record]
    assert len(assignees) == 4 and "w1" not in assignees, assignees
    assert [b.get(timeout=GET_TIMEOUT_S)["result"] for b in busy] == [0, 1, 2]


# --- round_robin -------------------------------------------------------------------


class TestRoundRobin:
    SETUP = ClusterSetup("round_robin", DB_ROUND_ROBIN)

    def test_sequential_jobs_visit_the_workers_in_turn(self, cluster: Cluster) -> None:
        assignees = []
        for i in range(12):
            result = cluster.submit("compute", {"operation": "sum", "values": [i, 1]})
            assert result.get(timeout=GET_TIMEOUT_S)["result"] == i + 1
            assignees.append(cluster.assignee(result))
        # Eligible workers are ordered by id and each job takes the next turn.
        for previous, current in itertools.pairwise(assignees):
            assert WORKERS.index(current) == (WORKERS.index(previous) + 1) % 3, assignees
        assert Counter(assignees) == {"w1": 4, "w2": 4, "w3": 4}

    def test_a_burst_is_spread_evenly(self, cluster: Cluster) -> None:
        n = 90
        assignees = cluster.complete_all(cluster.submit_many(n))
        counts = Counter(assignees)
        assert set(counts) == set(WORKERS)
        assert all(abs(counts[w] - n / 3) <= 1 for w in WORKERS), counts


# --- capability --------------------------------------------------------------------


class TestCapability:
    """w1 is a GPU specialist, w2 has a GPU and more, w3 has no tags at all."""

    SETUP = ClusterSetup(
        "capability",
        DB_CAPABILITY,
        tiers_with(
            worker_service("w1", tags=("gpu",)),
            worker_service("w2", tags=("gpu", "ssd")),
            worker_service("w3"),
        ),
    )

    def test_workers_advertise_their_tags(self, cluster: Cluster) -> None:
        cards = cluster.worker_cards()
        assert {w: sorted(c.tags) for w, c in cards.items()} == {
            "w1": ["gpu"],
            "w2": ["gpu", "ssd"],
            "w3": [],
        }

    def test_gpu_jobs_land_only_on_gpu_workers_the_closest_fit_first(
        self, cluster: Cluster
    ) -> None:
        assignees = cluster.complete_all(cluster.submit_many(30, requirements={"tags": ["gpu"]}))
        assert set(assignees) <= {"w1", "w2"}
        # w1 carries nothing beyond what the jobs need, so it takes all of them.
        assert set(assignees) == {"w1"}

    def test_jobs_needing_two_tags_go_to_the_only_worker_with_both(self, cluster: Cluster) -> None:
        results = cluster.submit_many(10, requirements={"tags": ["gpu", "ssd"]})
        assert set(cluster.complete_all(results)) == {"w2"}

    def test_jobs_needing_nothing_keep_the_specialists_free(self, cluster: Cluster) -> None:
        assert set(cluster.complete_all(cluster.submit_many(10))) == {"w3"}

    def test_a_tag_no_worker_has_fails_after_the_deadline(self, cluster: Cluster) -> None:
        started = time.monotonic()
        result = cluster.submit(
            "compute",
            {"operation": "sum", "values": [1]},
            requirements={"tags": ["nope"]},
            deadline_s=2,
        )
        with pytest.raises(NoEligibleWorkerError, match="nope"):
            result.get(timeout=GET_TIMEOUT_S)
        assert time.monotonic() - started >= 1.5  # it waited for the deadline, not less
        record = cluster.jobs.get(result.id)
        assert record is not None and record.status is JobStatus.FAILED
        assert record.assignee == "" and record.epoch == 0


# --- weighted ----------------------------------------------------------------------


class TestWeighted:
    SETUP = ClusterSetup(
        "weighted",
        DB_WEIGHTED,
        tiers_with(*(worker_service(w, AGENTS_WORKER_WEIGHT=str(n)) for w, n in WEIGHTS.items())),
    )

    def test_workers_advertise_their_weights(self, cluster: Cluster) -> None:
        cards = cluster.worker_cards()
        assert {w: c.weight for w, c in cards.items()} == WEIGHTS

    def test_the_heavy_worker_takes_most_jobs(self, cluster: Cluster) -> None:
        n = 200
        counts = Counter(cluster.complete_all(cluster.submit_many(n)))
        # Expected 20 / 20 / 160. These bounds are many standard deviations wide.
        assert counts["w3"] > n // 2, counts
        assert counts["w3"] > 2 * max(counts["w1"], counts["w2"]), counts
        assert counts["w1"] > 0 and counts["w2"] > 0, counts  # random, not exclusive
