"""End to end through real processes: submit_task.delay() -> ... -> AsyncResult.get()."""

from __future__ import annotations

import itertools
import time

import pytest

from project import (
    HandlerError,
    InvalidJobError,
    InvalidPayloadError,
    UnknownTaskTypeError,
    submit_many,
    submit_task,
)
from project.core.runtime import get_runtime
from project.local.deployment import LocalDeployment

pytestmark = pytest.mark.integration


def test_compute_sum(deployment: LocalDeployment) -> None:
    result = submit_task.delay("compute", {"operation": "sum", "values": [1, 2, 3]})
    assert result.get(timeout=30)["result"] == 6


@pytest.mark.parametrize(
    ("operation", "expected"),
    [("product", 24), ("mean", 2.5), ("min", 1), ("max", 4), ("median", 2.5), ("count", 4)],
)
def test_compute_operations(deployment: LocalDeployment, operation: str, expected: float) -> None:
    result = submit_task.delay("compute", {"operation": operation, "values": [1, 2, 3, 4]})
    assert result.get(timeout=30)["result"] == expected


def test_data_processing(deployment: LocalDeployment) -> None:
    records = [{"k": "a", "v": 3}, {"k": "b", "v": 1}, {"k": "a", "v": 5}, {"k": "c", "v": 0}]
    steps = [
        {"op": "filter", "field": "v", "cmp": "gt", "value": 0},
        {"op": "map", "field": "k", "func": "upper"},
        {"op": "sort", "field": "v", "reverse": True},
    ]
    result = submit_task.delay("data_processing", {"records": records, "steps": steps})
    out = result.get(timeout=30)
    assert out["result"] == [{"k": "A", "v": 5}, {"k": "A", "v": 3}, {"k": "B", "v": 1}]
    aggregate = [*steps, {"op": "aggregate", "func": "sum", "field": "v", "group_by": "k"}]
    result = submit_task.delay("data_processing", {"records": records, "steps": aggregate})
    assert result.get(timeout=30)["result"] == {"A": 8, "B": 1}


def test_generic_echo(deployment: LocalDeployment) -> None:
    result = submit_task.delay("generic", {"echo": {"hello": ["world", 1]}, "sleep_s": 0.05})
    assert result.get(timeout=30) == {"result": {"hello": ["world", 1]}}


def test_unknown_task_type(deployment: LocalDeployment) -> None:
    with pytest.raises(UnknownTaskTypeError, match="no-such-type"):
        submit_task.delay("no-such-type", {}).get(timeout=30)


def test_invalid_payload(deployment: LocalDeployment) -> None:
    with pytest.raises(InvalidPayloadError, match="operation"):
        submit_task.delay("compute", {"operation": "cube-root", "values": [1]}).get(timeout=30)


def test_invalid_job(deployment: LocalDeployment) -> None:
    with pytest.raises(InvalidJobError, match="priority"):
        submit_task.delay("compute", {"operation": "sum", "values": []}, priority="asap").get(
            timeout=30
        )


def test_handler_exception_reaches_caller(deployment: LocalDeployment) -> None:
    with pytest.raises(HandlerError, match=r"ZeroDivisionError|undefined"):
        submit_task.delay("compute", {"operation": "mean", "values": []}).get(timeout=30)


def test_causal_chain_reads_back(deployment: LocalDeployment) -> None:
    result = submit_task.delay("compute", {"operation": "sum", "values": [1]})
    result.get(timeout=30)
    jobs = get_runtime().jobs
    chain: list[dict[str, object]] = []
    deadline = time.monotonic() + 30  # the EVENT lands just after the result
    while time.monotonic() < deadline:
        chain = jobs.chain(result.id)
        if len(chain) == 4:
            break
        time.sleep(0.05)
    assert [link["type"] for link in chain] == ["REQUEST", "REQUEST", "RESPONSE", "EVENT"]
    assert all(link["request_id"] == result.id for link in chain)
    assert chain[0]["parent_request_id"] is None
    for parent, child in itertools.pairwise(chain):
        assert child["parent_request_id"] == parent["id"]
        assert child["sequence_number"] > parent["sequence_number"]
    record = jobs.get(result.id)
    assert record is not None and record.status == "COMPLETED" and record.epoch == 1


def test_many_jobs_across_three_workers_one_result_each(deployment: LocalDeployment) -> None:
    jobs = [
        {"task_type": "compute", "payload": {"operation": "sum", "values": [i, i]}}
        for i in range(500)
    ]
    results = submit_many(jobs)
    values = [r.get(timeout=180)["result"] for r in results]
    assert values == [2 * i for i in range(500)]
    store = get_runtime().jobs
    records = [store.get(r.id) for r in results]
    assert all(rec is not None and rec.status == "COMPLETED" for rec in records)
    assert all(rec is not None and rec.epoch == 1 and rec.attempts == 1 for rec in records)
    used = {rec.assignee for rec in records if rec is not None}
    assert used == {"w1", "w2", "w3"}
