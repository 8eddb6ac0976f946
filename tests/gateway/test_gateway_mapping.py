"""Between A2A and jobs: messages to jobs, job-log events to A2A events, folding."""

from __future__ import annotations

from typing import Any

import pytest
from a2a.types.a2a_pb2 import (
    Message,
    Part,
    Role,
    Task,
    TaskArtifactUpdateEvent,
    TaskState,
    TaskStatus,
    TaskStatusUpdateEvent,
)
from google.protobuf.json_format import ParseDict
from google.protobuf.struct_pb2 import Value

from project.gateway import mapping
from project.gateway.mapping import InvalidMessageError, JobEvent

S = TaskState


def msg(*parts: Part, **metadata: Any) -> Message:
    m = Message(message_id="m1", role=Role.ROLE_USER, parts=list(parts))
    if metadata:
        m.metadata.update(metadata)
    return m


def data(obj: Any) -> Part:
    return Part(data=ParseDict(obj, Value()))


def ev(n: int, kind: str = "status", **fields: Any) -> JobEvent:
    return JobEvent(id=f"{1000 + n}-0", ms=1000 + n, kind=kind, data=fields)


def test_the_skill_comes_from_metadata_else_the_default() -> None:
    assert mapping.skill_of(msg(Part(text="x"), skill="compute"), "generic") == "compute"
    assert mapping.skill_of(msg(Part(text="x")), "generic") == "generic"
    assert mapping.skill_of(msg(Part(text="x")), None) is None
    with pytest.raises(InvalidMessageError, match="skill"):
        mapping.skill_of(msg(Part(text="x"), skill=3), None)


def test_the_payload_is_the_data_part_with_whole_numbers_as_ints() -> None:
    payload = mapping.payload_of(
        msg(Part(text="ignored"), data({"values": [1, 2.5], "n": {"k": 3}}))
    )
    assert payload == {"values": [1, 2.5], "n": {"k": 3}}
    assert isinstance(payload["values"][0], int)
    assert mapping.payload_of(msg(Part(text="a"), Part(text="b"))) == {"text": "a\nb"}
    with pytest.raises(InvalidMessageError, match="JSON object"):
        mapping.payload_of(msg(data([1, 2])))
    with pytest.raises(InvalidMessageError, match="nothing to run"):
        mapping.payload_of(msg(Part(url="https://example.com/x")))


def test_a_resume_value_is_the_data_part_else_the_text() -> None:
    assert mapping.resume_value_of(msg(data({"colour": "red"}))) == {"colour": "red"}
    assert mapping.resume_value_of(msg(Part(text="red"))) == "red"


@pytest.mark.parametrize(
    ("status", "error", "state"),
    [
        ("PENDING", None, S.TASK_STATE_SUBMITTED),
        ("ASSIGNED", None, S.TASK_STATE_WORKING),
        ("IN_PROGRESS", None, S.TASK_STATE_WORKING),
        ("INPUT_REQUIRED", None, S.TASK_STATE_INPUT_REQUIRED),
        ("COMPLETED", None, S.TASK_STATE_COMPLETED),
        ("FAILED", {"type": "HandlerError", "message": "x"}, S.TASK_STATE_FAILED),
        ("FAILED", {"type": "JobRejectedError", "message": "x"}, S.TASK_STATE_REJECTED),
        ("FAILED", {"type": "InvalidPayloadError", "message": "x"}, S.TASK_STATE_REJECTED),
        ("FAILED", {"type": "UnknownTaskTypeError", "message": "x"}, S.TASK_STATE_REJECTED),
        ("CANCELED", None, S.TASK_STATE_CANCELED),
        ("ABANDONED", {"type": "JobAbandonedError", "message": "x"}, S.TASK_STATE_FAILED),
    ],
)
def test_job_statuses_map_to_task_states(status: str, error: Any, state: TaskState) -> None:
    assert mapping.task_state(status, error) == state


def states(events: list[Any]) -> list[TaskState]:
    return [e.status.state for e in events if isinstance(e, TaskStatusUpdateEvent)]


def test_a_status_event_becomes_a_status_update_carrying_its_cursor() -> None:
    [update] = mapping.events_for("t", "c", ev(1, status="ASSIGNED"), S.TASK_STATE_SUBMITTED)
    assert isinstance(update, TaskStatusUpdateEvent)
    assert update.status.state == S.TASK_STATE_WORKING
    assert update.metadata["cursor"] == "1001-0"
    assert update.status.timestamp.ToMilliseconds() == 1001
    # Working again (IN_PROGRESS after ASSIGNED) shows the client nothing new.
    assert mapping.events_for("t", "c", ev(2, status="IN_PROGRESS"), S.TASK_STATE_WORKING) == []
    # PENDING after a resume is on its way back to work, not "submitted" again.
    after_input = mapping.events_for("t", "c", ev(3, status="PENDING"), S.TASK_STATE_INPUT_REQUIRED)
    assert states(after_input) == [S.TASK_STATE_WORKING]


def test_nothing_follows_a_terminal_state() -> None:
    assert mapping.events_for("t", "c", ev(1, status="COMPLETED"), S.TASK_STATE_CANCELED) == []


def test_input_required_asks_with_the_interrupts() -> None:
    interrupts = [{"id": "i1", "value": "which colour?"}, {"id": "i2", "value": {"max": 3}}]
    [update] = mapping.events_for(
        "t", "c", ev(1, status="INPUT_REQUIRED", interrupts=interrupts), S.TASK_STATE_WORKING
    )
    assert update.status.state == S.TASK_STATE_INPUT_REQUIRED
    question = update.status.message
    assert question.role == Role.ROLE_AGENT
    assert question.parts[0].text == "which colour?"
    assert mapping.from_value(question.parts[1].data) == {"max": 3}
    assert list(question.metadata["interrupts"]) == ["i1", "i2"]


def test_progress_becomes_a_working_update_with_the_progress() -> None:
    [update] = mapping.events_for(
        "t", "c", ev(1, "custom", text="half way", pct=50), S.TASK_STATE_WORKING
    )
    assert update.status.state == S.TASK_STATE_WORKING
    parts = update.status.message.parts
    assert parts[0].text == "half way"
    assert mapping.from_value(parts[1].data) == {"text": "half way", "pct": 50}


def test_an_agents_state_updates_stay_inside() -> None:
    assert mapping.events_for("t", "c", ev(1, "update", node={"x": 1}), S.TASK_STATE_WORKING) == []


def test_a_plain_result_becomes_an_artifact_with_data_and_text() -> None:
    events = mapping.events_for(
        "t", "c", ev(1, status="COMPLETED", result={"result": "HI"}), S.TASK_STATE_WORKING
    )
    artifact_update, done = events
    assert isinstance(artifact_update, TaskArtifactUpdateEvent)
    parts = artifact_update.artifact.parts
    assert mapping.from_value(parts[0].data) == {"result": "HI"}
    assert parts[1].text == "HI"
    assert done.status.state == S.TASK_STATE_COMPLETED
    only_data = mapping.answer_of("t", "c", "1-0", {"sum": 6})
    assert [p.WhichOneof("content") for p in only_data.artifacts[0][0].parts] == ["data"]


def test_a_shaped_answer_gives_artifacts_of_every_part_kind() -> None:
    answer = mapping.answer_of(
        "t",
        "c",
        "1-0",
        {
            "a2a": {
                "artifacts": [
                    {"name": "doc", "parts": ["hello", {"data": {"n": 1}}], "artifactId": "a1"},
                    {"parts": [{"url": "https://example.com/x.txt", "mediaType": "text/plain"}]},
                    {
                        "parts": {"raw": "dGNr", "filename": "x.bin"},
                        "artifactId": "a1",
                        "append": True,
                        "lastChunk": False,
                    },
                ],
                "status_message": "done",
            }
        },
    )
    (doc, _, _), (link, _, _), (blob, append, last) = answer.artifacts
    assert (doc.artifact_id, doc.name, doc.parts[0].text) == ("a1", "doc", "hello")
    assert link.parts[0].url == "https://example.com/x.txt"
    assert (blob.artifact_id, blob.parts[0].raw, append, last) == ("a1", b"tck", True, False)
    assert answer.message is not None and answer.message.parts[0].text == "done"
    assert not answer.direct


def test_a_direct_message_answer() -> None:
    answer = mapping.answer_of("t", "c", "1-0", {"a2a": {"message": [{"text": "hi"}]}, "x": 1})
    assert answer.direct and answer.message is not None
    assert answer.message.parts[0].text == "hi"
    [done] = mapping.events_for(
        "t", "c", ev(1, status="COMPLETED", result={"a2a": {"message": "hi"}}), S.TASK_STATE_WORKING
    )
    assert done.metadata["answer"] == "message"


@pytest.mark.parametrize(
    "shape",
    [
        "not an object",
        {"artifacts": "x"},
        {"artifacts": [{"parts": []}]},
        {"artifacts": [{"parts": [{"raw": "not base64!"}]}]},
        {"artifacts": [{"parts": [{"nothing": 1}]}]},
        {"message": "hi", "artifacts": []},
        {"unknown": 1},
        {"artifacts": [{"artifactId": "a1", "parts": ["x"], "append": True}]},
        {"artifacts": [{"parts": ["x"]}, {"parts": ["y"], "append": True}]},
    ],
)
def test_a_malformed_answer_fails_the_task_with_a_reason(shape: Any) -> None:
    with pytest.raises(InvalidMessageError):
        mapping.answer_of("t", "c", "1-0", {"a2a": shape})
    [failed] = mapping.events_for(
        "t", "c", ev(1, status="COMPLETED", result={"a2a": shape}), S.TASK_STATE_WORKING
    )
    assert failed.status.state == S.TASK_STATE_FAILED
    assert "malformed" in failed.status.message.parts[0].text


def test_errors_say_what_failed() -> None:
    [failed] = mapping.events_for(
        "t",
        "c",
        ev(1, status="FAILED", error={"type": "HandlerError", "message": "boom"}),
        S.TASK_STATE_WORKING,
    )
    assert failed.status.message.parts[0].text == "HandlerError: boom"
    [rejected] = mapping.events_for(
        "t",
        "c",
        ev(1, status="FAILED", error={"type": "JobRejectedError", "message": "no"}),
        S.TASK_STATE_WORKING,
    )
    assert rejected.status.state == S.TASK_STATE_REJECTED


def new_task() -> Task:
    return Task(id="t", context_id="c", status=TaskStatus(state=S.TASK_STATE_SUBMITTED))


LOG = [
    ev(1, status="PENDING"),
    ev(2, status="ASSIGNED"),
    ev(3, "custom", text="half"),
    ev(4, status="IN_PROGRESS"),
    ev(5, status="COMPLETED", result={"result": "ok"}),
]


def test_folding_the_log_builds_the_task() -> None:
    task = new_task()
    assert mapping.fold(task, LOG) == "1005-0"
    assert task.status.state == S.TASK_STATE_COMPLETED
    assert mapping.cursor_of_task(task) == "1005-0"
    assert [a.artifact_id for a in task.artifacts] == ["t:result"]
    assert [m.parts[0].text for m in task.history] == ["half"]


def test_folding_in_two_steps_is_folding_at_once() -> None:
    whole, halves = new_task(), new_task()
    mapping.fold(whole, LOG)
    mapping.fold(halves, LOG[:3])
    mapping.fold(halves, LOG[3:])
    assert halves == whole


def test_a_terminal_task_folds_nothing_more() -> None:
    task = new_task()
    task.status.state = S.TASK_STATE_CANCELED
    mapping.fold(task, LOG)
    assert task.status.state == S.TASK_STATE_CANCELED and not task.artifacts


def test_the_message_json_is_the_spec_form() -> None:
    as_json = mapping.message_json(msg(Part(text="hi"), data({"n": 1}), skill="x"))
    assert as_json == {
        "messageId": "m1",
        "role": "ROLE_USER",
        "parts": [{"text": "hi"}, {"data": {"n": 1}}],
        "metadata": {"skill": "x"},
    }
