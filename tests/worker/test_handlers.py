"""The built-in task types and the handler registry, called directly (no Redis, no Celery)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from project.core.errors import ConfigurationError, JobError
from project.core.messages import WorkOrder
from project.core.runtime import Runtime
from project.core.settings import Settings
from project.worker import HANDLERS, handler
from project.worker.bootstep import build_worker_card
from project.worker.execution import call_handler, validated
from project.worker.handlers import (
    ComputePayload,
    DataProcessingPayload,
    GenericPayload,
)


def run(task_type: str, payload: dict[str, Any]) -> Any:
    """Validate ``payload`` with the task type's model and call its handler."""
    registered = HANDLERS[task_type]
    return registered.fn(registered.payload_model.model_validate(payload))


def test_builtin_task_types_are_registered() -> None:
    assert {"compute", "data_processing", "generic"} <= set(HANDLERS)
    assert HANDLERS["compute"].payload_model is ComputePayload
    assert HANDLERS["data_processing"].payload_model is DataProcessingPayload
    assert HANDLERS["generic"].payload_model is GenericPayload
    assert HANDLERS["compute"].tags == ("math",)
    assert HANDLERS["compute"].description  # taken from the docstring


# --- compute -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("operation", "values", "expected"),
    [
        ("sum", [1, 2, 3], 6),
        ("sum", [1.5, 2.25], 3.75),
        ("product", [2, 3, 4], 24),
        ("mean", [1, 2, 3, 4], 2.5),
        ("median", [5, 1, 3], 3),
        ("median", [4, 1, 3, 2], 2.5),
        ("min", [3, -1, 2], -1),
        ("max", [3, -1, 2], 3),
        ("stdev", [2, 4, 4, 4, 5, 5, 7, 9], 2.0),
        ("count", [7, 7, 7], 3),
        ("sum", [], 0),
        ("product", [], 1),
        ("count", [], 0),
    ],
)
def test_compute(operation: str, values: list[float], expected: float) -> None:
    out = run("compute", {"operation": operation, "values": values})
    assert out["operation"] == operation
    assert math.isclose(out["result"], expected)


@pytest.mark.parametrize("operation", ["mean", "median", "min", "max", "stdev"])
def test_compute_of_no_values_is_an_error(operation: str) -> None:
    with pytest.raises(ValueError, match="undefined"):
        run("compute", {"operation": operation, "values": []})


def test_compute_keeps_integers_integral() -> None:
    out = run("compute", {"operation": "sum", "values": [1, 2, 3]})
    assert out["result"] == 6 and isinstance(out["result"], int)


# --- data_processing ---------------------------------------------------------

RECORDS: list[dict[str, Any]] = [
    {"name": "ada", "team": "x", "score": 3},
    {"name": "bob", "team": "y", "score": -1},
    {"name": "cy", "team": "x", "score": 5},
    {"name": "di", "score": 2},  # no team
]


def process(*steps: dict[str, Any], records: list[dict[str, Any]] | None = None) -> Any:
    return run(
        "data_processing",
        {"records": RECORDS if records is None else records, "steps": list(steps)},
    )


def test_no_steps_returns_the_records() -> None:
    assert process() == {"result": RECORDS, "count": 4}


@pytest.mark.parametrize(
    ("cmp", "value", "names"),
    [
        ("eq", 3, ["ada"]),
        ("ne", 3, ["bob", "cy", "di"]),
        ("gt", 2, ["ada", "cy"]),
        ("ge", 2, ["ada", "cy", "di"]),
        ("lt", 2, ["bob"]),
        ("le", 2, ["bob", "di"]),
        ("in", [5, -1], ["bob", "cy"]),
    ],
)
def test_filter(cmp: str, value: Any, names: list[str]) -> None:
    out = process({"op": "filter", "field": "score", "cmp": cmp, "value": value})
    assert [r["name"] for r in out["result"]] == names
    assert out["count"] == len(names)


def test_filter_skips_records_without_the_field() -> None:
    out = process({"op": "filter", "field": "team", "value": "x"})
    assert [r["name"] for r in out["result"]] == ["ada", "cy"]
    out = process({"op": "filter", "field": "team", "cmp": "ne", "value": "x"})
    assert [r["name"] for r in out["result"]] == ["bob"]  # "di" has no team at all


def test_map_in_place_and_into_another_field() -> None:
    out = process({"op": "map", "field": "name", "func": "upper"})
    assert [r["name"] for r in out["result"]] == ["ADA", "BOB", "CY", "DI"]
    out = process({"op": "map", "field": "score", "func": "square", "into": "sq"})
    assert [(r["score"], r["sq"]) for r in out["result"]] == [(3, 9), (-1, 1), (5, 25), (2, 4)]
    out = process({"op": "map", "field": "score", "func": "abs"})
    assert [r["score"] for r in out["result"]] == [3, 1, 5, 2]


def test_map_does_not_mutate_the_input_records() -> None:
    records = [{"v": 1}]
    process({"op": "map", "field": "v", "func": "neg"}, records=records)
    assert records == [{"v": 1}]


def test_map_of_a_missing_field_raises() -> None:
    with pytest.raises(KeyError):
        process({"op": "map", "field": "team", "func": "upper"})


def test_sort_both_ways() -> None:
    out = process({"op": "sort", "field": "score"})
    assert [r["name"] for r in out["result"]] == ["bob", "di", "ada", "cy"]
    out = process({"op": "sort", "field": "score", "reverse": True})
    assert [r["name"] for r in out["result"]] == ["cy", "ada", "di", "bob"]


@pytest.mark.parametrize(
    ("func", "expected"),
    [("sum", 9), ("count", 4), ("min", -1), ("max", 5), ("mean", 2.25)],
)
def test_aggregate_without_group_by(func: str, expected: float) -> None:
    out = process({"op": "aggregate", "func": func, "field": "score"})
    assert out == {"result": expected, "count": 4}


def test_aggregate_with_group_by() -> None:
    out = process({"op": "aggregate", "func": "sum", "field": "score", "group_by": "team"})
    # A record without the group field falls in the group "None".
    assert out == {"result": {"None": 2, "x": 8, "y": -1}, "count": 4}
    out = process({"op": "aggregate", "func": "count", "group_by": "team"})
    assert out["result"] == {"None": 1, "x": 2, "y": 1}


def test_aggregate_other_than_count_needs_a_field() -> None:
    with pytest.raises(ValueError, match="needs a field"):
        process({"op": "aggregate", "func": "sum"})


def test_steps_run_in_order() -> None:
    out = process(
        {"op": "filter", "field": "score", "cmp": "gt", "value": 0},
        {"op": "map", "field": "score", "func": "neg"},
        {"op": "sort", "field": "score"},
        {"op": "aggregate", "func": "max", "field": "score", "group_by": "team"},
    )
    assert out == {"result": {"None": -2, "x": -3}, "count": 3}


# --- generic -----------------------------------------------------------------


def test_generic_echoes_its_payload() -> None:
    echo = {"nested": [1, "two", None, {"three": 3.0}]}
    assert run("generic", {"echo": echo}) == {"result": echo}
    assert run("generic", {}) == {"result": None}
    assert run("generic", {"echo": "x", "extra": 1}) == {"result": "x"}  # extras allowed


def test_generic_sleeps_first(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr("project.worker.handlers.time.sleep", slept.append)
    assert run("generic", {"echo": 1, "sleep_s": 0.25}) == {"result": 1}
    assert slept == [0.25]


# --- payload validation ------------------------------------------------------


@pytest.mark.parametrize(
    ("task_type", "payload", "where"),
    [
        ("compute", {"operation": "cube-root", "values": [1]}, "operation"),
        ("compute", {"operation": "sum"}, "values"),
        ("compute", {"operation": "sum", "values": ["abc"]}, "values.0"),
        ("compute", {"operation": "sum", "values": [1], "extra": True}, "extra"),
        ("data_processing", {"steps": []}, "records"),
        ("data_processing", {"records": [1, 2]}, "records.0"),
        ("data_processing", {"records": [], "steps": [{"op": "explode"}]}, "steps.0"),
        ("data_processing", {"records": [], "steps": [{"op": "sort"}]}, "steps.0.sort.field"),
        (
            "data_processing",
            {"records": [], "steps": [{"op": "map", "field": "a", "func": "eval"}]},
            "steps.0.map.func",
        ),
        (
            "data_processing",
            {"records": [], "steps": [{"op": "sort", "field": "a"}] * 33},
            "steps",
        ),
        ("generic", {"sleep_s": -1}, "sleep_s"),
        ("generic", {"sleep_s": 3601}, "sleep_s"),
    ],
)
def test_invalid_payloads_are_refused_by_the_model(
    task_type: str, payload: dict[str, Any], where: str
) -> None:
    with pytest.raises(ValidationError) as info:
        HANDLERS[task_type].payload_model.model_validate(payload)
    locations = {".".join(str(p) for p in e["loc"]) for e in info.value.errors()}
    assert any(loc.startswith(where) for loc in locations), locations


# --- the registry --------------------------------------------------------------


class Shout(BaseModel):
    text: str


@pytest.fixture
def registered() -> Iterator[list[str]]:
    """Task types a test registers; removed again afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        HANDLERS.pop(name, None)


def test_an_app_registers_its_own_task_type(registered: list[str]) -> None:
    registered.append("test-shout")

    @handler("test-shout", payload=Shout, tags=("text",))
    def shout(job: Shout) -> dict[str, str]:
        """Upper-cases text."""
        return {"result": job.text.upper()}

    entry = HANDLERS["test-shout"]
    assert entry.fn is shout and entry.payload_model is Shout
    assert entry.tags == ("text",) and entry.description == "Upper-cases text."
    assert run("test-shout", {"text": "hi"}) == {"result": "HI"}
    with pytest.raises(ValidationError):
        run("test-shout", {"text": ["not", "a", "string"]})


def test_registering_the_same_function_again_is_harmless(registered: list[str]) -> None:
    registered.append("test-twice")

    def twice(job: Shout) -> str:
        return job.text * 2

    handler("test-twice", payload=Shout)(twice)
    handler("test-twice", payload=Shout)(twice)  # a module imported twice
    assert HANDLERS["test-twice"].fn is twice


def test_a_second_handler_for_a_task_type_raises(registered: list[str]) -> None:
    registered.append("test-dup")

    @handler("test-dup", payload=Shout)
    def first(job: Shout) -> str:
        return "first"

    with pytest.raises(ValueError, match="test-dup"):

        @handler("test-dup", payload=Shout)
        def second(job: Shout) -> str:
            return "second"

    assert HANDLERS["test-dup"].fn is first


def test_a_builtin_task_type_cannot_be_replaced() -> None:
    original = HANDLERS["compute"]
    with pytest.raises(ValueError, match="compute"):
        handler("compute", payload=Shout)(lambda job: None)
    assert HANDLERS["compute"] is original


# --- how the worker maps handler outcomes to job errors ---------------------------


def order(task_type: str, payload: dict[str, Any]) -> WorkOrder:
    return WorkOrder(job_id="job-1", epoch=1, task_type=task_type, payload=payload)


def handle(work: WorkOrder) -> Any:
    """Validate the order's payload and call its handler, as a worker does."""
    entry, payload = validated(work)
    return call_handler(work, entry, payload)


def test_call_handler_completes_a_valid_job() -> None:
    result = handle(order("compute", {"operation": "sum", "values": [1, 2]}))
    assert result == {"operation": "sum", "result": 3}


@pytest.mark.parametrize(
    ("task_type", "payload", "error_type", "words"),
    [
        ("compute", {"operation": "cube-root", "values": [1]}, "InvalidPayloadError", "operation"),
        ("compute", {"operation": "mean", "values": []}, "HandlerError", "ValueError"),
        ("test-missing-type", {}, "UnknownTaskTypeError", "test-missing-type"),
        (  # the error names the bad step's own missing field
            "data_processing",
            {"records": [], "steps": [{"op": "sort"}]},
            "InvalidPayloadError",
            "steps.0.sort.field: Field required",
        ),
        (
            "data_processing",
            {"records": [{"a": 1}], "steps": [{"op": "sort", "field": "b"}]},
            "HandlerError",
            "KeyError",
        ),
    ],
)
def test_call_handler_turns_failures_into_job_errors(
    task_type: str, payload: dict[str, Any], error_type: str, words: str
) -> None:
    with pytest.raises(JobError) as caught:
        handle(order(task_type, payload))
    assert type(caught.value).__name__ == error_type
    assert words in str(caught.value)


def test_a_time_limit_past_the_visibility_timeout_stops_the_worker_at_start(
    registered: list[str],
) -> None:
    """The broker hands an unacknowledged job out again after its visibility timeout: a
    task type allowed to run that long would run twice, so the worker refuses to start."""
    registered.append("test-long")
    handler("test-long", payload=Shout, time_limit_s=600)(lambda job: job.text)
    settings = Settings(worker_id="w-long", worker_task_types=["test-long"])

    card = build_worker_card(
        Runtime(settings.model_copy(update={"visibility_timeout_s": 611})), None
    )
    assert [(s.id, s.time_limit_s) for s in card.skills] == [("test-long", 600)]
    with pytest.raises(ConfigurationError, match=r"\['test-long'\].*AGENTS_VISIBILITY_TIMEOUT_S"):
        build_worker_card(Runtime(settings.model_copy(update={"visibility_timeout_s": 610})), None)
