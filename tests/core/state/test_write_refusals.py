"""Recognising, riding out and reporting writes Redis refuses (no Redis needed)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from kombu.exceptions import OperationalError
from prometheus_client import REGISTRY
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)
from redis.exceptions import (
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
)

from project.core.errors import WriteRefusedError
from project.core.state.connections import (
    WriteOp,
    WriteRetryPolicy,
    is_write_refused,
    last_write_refusal_age_s,
    ride_out,
    ride_out_writes,
    rides_out_writes,
    write_refusal,
)
from project.core.submits import record_submits

OOM = "command not allowed when used memory > 'maxmemory'."
FAST = WriteRetryPolicy(first_delay_s=0.001, max_delay_s=0.002)


@pytest.fixture(autouse=True)
def _fail_fast_by_default() -> Iterator[None]:
    ride_out_writes(False)
    ride_out_writes(False, this_thread=True)
    yield
    ride_out_writes(False)
    ride_out_writes(None, this_thread=True)


def _written(op: str) -> float:
    value = REGISTRY.get_sample_value(
        "agents_redis_write_errors_total", {"tier": "client", "op": op}
    )
    return value or 0.0


def _wrapped(error: Exception) -> OperationalError:
    try:
        try:
            raise error
        except Exception as exc:
            raise OperationalError(str(exc)) from exc
    except OperationalError as wrapped:
        return wrapped


@pytest.mark.parametrize(
    ("error", "meaning"),
    [
        (OutOfMemoryError(OOM), "out of memory"),
        (ReadOnlyError("You can't write against a read only replica."), "read-only replica"),
        # Redis 6.2 reports a refusal inside a Lua script as a plain ResponseError.
        (
            ResponseError(
                "Error running script (call to f_1): @user_script:1: "
                "@user_script: 1: -OOM command not allowed when used memory > 'maxmemory'."
            ),
            "out of memory",
        ),
        (ResponseError("MISCONF Redis is configured to save RDB snapshots"), "MISCONF"),
        (ResponseError("NOREPLICAS Not enough good replicas to write."), "NOREPLICAS"),
        # kombu wraps what a publish raised.
        (_wrapped(OutOfMemoryError(OOM)), "out of memory"),
        # A heartbeat's probe returns the refusal as text.
        ("OOM command not allowed when used memory > 'maxmemory'.", "out of memory"),
    ],
)
def test_refusals_are_recognised(error: Exception | str, meaning: str) -> None:
    described = write_refusal(error)
    assert described is not None and meaning in described
    assert is_write_refused(error)


@pytest.mark.parametrize(
    "error",
    [
        ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
        RedisConnectionError("Connection refused"),
        ValueError("OOM in a message that is no Redis error"),
        "all fine",
        None,
    ],
)
def test_other_errors_are_not_refusals(error: Exception | str | None) -> None:
    assert write_refusal(error) is None


def test_ride_out_tries_again_until_redis_takes_the_write() -> None:
    calls: list[int] = []

    def write() -> str:
        calls.append(1)
        if len(calls) < 4:
            raise OutOfMemoryError(OOM)
        return "done"

    before = _written("state")
    assert ride_out(write, op=WriteOp.STATE, policy=FAST) == "done"
    assert len(calls) == 4
    assert _written("state") == before + 3
    age = last_write_refusal_age_s()
    assert age is not None and age < 5


def test_ride_out_raises_any_other_error_at_once() -> None:
    calls: list[int] = []

    def write() -> None:
        calls.append(1)
        raise ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")

    with pytest.raises(ResponseError, match="WRONGTYPE"):
        ride_out(write, op=WriteOp.STATE, policy=FAST)
    assert calls == [1]


def test_backoff_grows_to_its_ceiling_with_jitter() -> None:
    policy = WriteRetryPolicy(first_delay_s=0.1, max_delay_s=2.0)
    assert 0.05 <= policy.delay_s(1) <= 0.1
    assert 0.2 <= policy.delay_s(3) <= 0.4
    assert all(1.0 <= policy.delay_s(n) <= 2.0 for n in (6, 10, 100))


def test_a_thread_choice_wins_over_the_process() -> None:
    ride_out_writes(True)
    seen: dict[str, bool] = {}

    def timer() -> None:
        ride_out_writes(False, this_thread=True)
        seen["timer"] = rides_out_writes()

    thread = threading.Thread(target=timer)
    thread.start()
    thread.join(timeout=5)
    ride_out_writes(None, this_thread=True)
    assert seen == {"timer": False}
    assert rides_out_writes() is True


class _Store:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def record_intents(self, calls: dict[str, Any]) -> None:
        raise self.error


def test_a_refused_submit_fails_at_the_caller_with_a_clear_error() -> None:
    store: Any = _Store(OutOfMemoryError(OOM))
    with pytest.raises(WriteRefusedError, match=r"out of memory.*nothing was submitted") as caught:
        record_submits(store, {"job-1": {"args": ["generic", {}], "kwargs": {}}})
    assert isinstance(caught.value.__cause__, OutOfMemoryError)


def test_other_submit_errors_pass_through() -> None:
    store: Any = _Store(RedisConnectionError("Connection refused"))
    with pytest.raises(RedisConnectionError):
        record_submits(store, {"job-1": {"args": ["generic", {}], "kwargs": {}}})


def test_a_recorded_submit_whose_broker_publish_fails_is_deferred_not_lost() -> None:
    """The intent is recorded, so a publish on a closed broker channel is re-sent later."""
    from celery import Celery
    from kombu.exceptions import OperationalError

    from project.core.submits import publish_recorded

    def closed_channel() -> Any:
        raise OperationalError("broker channel is closed (its connection was lost)")

    result = publish_recorded(Celery("deferred", set_as_current=False), "job-7", closed_channel)
    assert result.id == "job-7" and result.ignored is False


def test_any_other_publish_error_reaches_the_caller() -> None:
    from celery import Celery

    from project.core.submits import publish_recorded

    def broken() -> Any:
        raise ValueError("not JSON serializable")

    with pytest.raises(ValueError, match="serializable"):
        publish_recorded(Celery("raises", set_as_current=False), "job-8", broken)
