"""Submits and resumes signed by an agent that holds the A2A keys (the gateway's path):
the coordinator verifies them before it takes a job in; anything forged never runs."""

from __future__ import annotations

import copy

import pytest
from celery.utils import uuid

from project import get_job, submit_signed, submit_task
from project.core.constants import GATEWAY, KEY_INTENTS
from project.core.errors import MisdirectedEnvelopeError, SignatureError
from project.core.runtime import get_runtime
from project.local.deployment import LocalDeployment

pytestmark = pytest.mark.integration


def test_a_signed_submit_runs_and_its_chain_starts_at_its_sender(
    deployment: LocalDeployment,
) -> None:
    result = submit_signed(
        "compute", {"operation": "sum", "values": [4, 5]}, sender=GATEWAY, owner="alice"
    )
    assert result.get(timeout=30) == {"operation": "sum", "result": 9}
    assert get_job(result.id).owner == "alice"
    chain = get_runtime().jobs.chain(result.id)
    # The coordinator's REQUEST continues the chain the gateway's signed submit began
    # (an app's plain submit starts a chain at the coordinator: no parent).
    assert chain[0]["request_id"] == result.id
    assert chain[0]["parent_request_id"] is not None
    plain = submit_task.delay("compute", {"operation": "sum", "values": [1]})
    plain.get(timeout=30)
    assert get_runtime().jobs.chain(plain.id)[0]["parent_request_id"] is None


def test_a_tampered_signed_submit_never_runs(deployment: LocalDeployment) -> None:
    genuine = get_runtime().signer.request(
        sender=GATEWAY,
        recipient="coordinator",
        payload={"job_id": "x", "job": {"task_type": "generic", "payload": {"echo": 1}}},
        request_id="x",
    )
    job_id = uuid()
    wire = copy.deepcopy(genuine.to_wire())
    wire["payload"] = {"job_id": job_id, "job": {"task_type": "generic", "payload": {"echo": 2}}}
    result = submit_task.apply_async(kwargs={"envelope": wire}, task_id=job_id)
    with pytest.raises(SignatureError):
        result.get(timeout=30)
    assert get_runtime().jobs.get(job_id) is None  # nothing was recorded, nothing ran
    assert not get_runtime().redis.hexists(KEY_INTENTS, job_id)  # and it is not re-sent


def test_a_signed_submit_for_another_job_is_refused(deployment: LocalDeployment) -> None:
    other = uuid()
    signed = get_runtime().signer.request(
        sender=GATEWAY,
        recipient="coordinator",
        payload={"job_id": other, "job": {"task_type": "generic", "payload": {"echo": 3}}},
        request_id=other,
    )
    result = submit_task.apply_async(kwargs={"envelope": signed.to_wire()})
    with pytest.raises(MisdirectedEnvelopeError, match=f"for job {other}"):
        result.get(timeout=30)
    assert get_runtime().jobs.get(result.id) is None and get_runtime().jobs.get(other) is None
