"""Between A2A and our jobs: pure functions, no I/O.

Inbound, a message becomes a job: its skill (task type) from the message metadata key
``skill`` (else the configured default), its payload from its first data part, or
``{"text": ...}`` from its text parts when it has no data part.

Outbound, each event of a job's log becomes A2A events (:func:`events_for`): a status
change a task status update, a progress event (what an agent writes with
``get_stream_writer()``) a ``working`` status update with the progress as a data part
(and a text part if it has ``text``), and the final status the answer
(:func:`answer_of`) and the final status update. An agent's super-step state updates
stay inside (Python apps see them in ``job_events``).

The same function serves the gateway that runs a request, any replica that streams the
task, and the task store that folds the log into the task (:func:`apply`), so all three
agree event for event. Every status update carries the
job-log cursor it came from in its metadata (``cursor``); the task keeps the last one,
which is how far its stored form has folded the log.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from a2a.server.events.event_queue import Event
from a2a.server.tasks.task_manager import append_artifact_to_task
from a2a.types.a2a_pb2 import (
    Artifact,
    Message,
    Part,
    Role,
    Task,
    TaskArtifactUpdateEvent,
    TaskState,
    TaskStatus,
    TaskStatusUpdateEvent,
)
from google.protobuf.json_format import (  # type: ignore[import-untyped]
    MessageToDict,
    ParseDict,
    ParseError,
)
from google.protobuf.struct_pb2 import Struct, Value  # type: ignore[import-untyped]

__all__ = [
    "ANSWER_KEY",
    "CURSOR_KEY",
    "INTERRUPTED_STATES",
    "REJECTING_ERRORS",
    "SKILL_KEY",
    "TERMINAL_STATES",
    "Answer",
    "InvalidMessageError",
    "JobEvent",
    "answer_of",
    "apply",
    "cursor_of_task",
    "events_for",
    "fold",
    "from_value",
    "message_json",
    "payload_of",
    "refusal",
    "rejection",
    "resume_value_of",
    "skill_of",
    "task_state",
]

SKILL_KEY: Final = "skill"
"""Message metadata key naming the skill (task type); also set on the task's metadata."""
CURSOR_KEY: Final = "cursor"
"""Status-update and task metadata key: the job-log cursor the update came from."""
ANSWER_KEY: Final = "answer"
"""Task metadata key set to ``"message"`` when the handler answered with a direct Message."""
A2A_RESULT_KEY: Final = "a2a"
"""Result key by which a handler shapes its A2A answer (see docs/gateway.md)."""

TERMINAL_STATES: Final = frozenset(
    {
        TaskState.TASK_STATE_COMPLETED,
        TaskState.TASK_STATE_FAILED,
        TaskState.TASK_STATE_CANCELED,
        TaskState.TASK_STATE_REJECTED,
    }
)
INTERRUPTED_STATES: Final = frozenset(
    {TaskState.TASK_STATE_INPUT_REQUIRED, TaskState.TASK_STATE_AUTH_REQUIRED}
)
REJECTING_ERRORS: Final = frozenset(
    {"JobRejectedError", "UnknownTaskTypeError", "InvalidPayloadError", "InvalidJobError"}
)
"""Job error types that mean "refused", not "failed": the task state is ``rejected``."""

_STATE_OF_STATUS: Final = {
    "PENDING": TaskState.TASK_STATE_SUBMITTED,
    "ASSIGNED": TaskState.TASK_STATE_WORKING,
    "IN_PROGRESS": TaskState.TASK_STATE_WORKING,
    "INPUT_REQUIRED": TaskState.TASK_STATE_INPUT_REQUIRED,
    "COMPLETED": TaskState.TASK_STATE_COMPLETED,
    "FAILED": TaskState.TASK_STATE_FAILED,
    "CANCELED": TaskState.TASK_STATE_CANCELED,
    "ABANDONED": TaskState.TASK_STATE_FAILED,
}
_BEFORE_WORK: Final = frozenset({TaskState.TASK_STATE_UNSPECIFIED, TaskState.TASK_STATE_SUBMITTED})
_FINAL_STATUSES: Final = frozenset({"COMPLETED", "FAILED", "CANCELED", "ABANDONED"})
_MAX_SAFE_INT: Final = 2**53


class InvalidMessageError(ValueError):
    """An A2A message (or a handler's A2A answer) that cannot be mapped; says why."""


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One event of a job's log, as the gateway reads it (see ``project.JobLogEvent``)."""

    id: str
    """Its cursor (a Redis stream id)."""
    ms: int
    kind: str
    """``status``, ``update`` or ``custom``."""
    data: Mapping[str, Any]

    @property
    def is_final(self) -> bool:
        """True for the status event that ends the job."""
        return self.kind == "status" and self.data.get("status") in _FINAL_STATUSES

    @property
    def is_input_required(self) -> bool:
        """True for the status event of a job that waits for input."""
        return self.kind == "status" and self.data.get("status") == "INPUT_REQUIRED"


@dataclass(frozen=True, slots=True)
class Answer:
    """How a completed job answers: artifacts and a status message, or a direct Message."""

    artifacts: list[tuple[Artifact, bool, bool]] = field(default_factory=list)
    """Each artifact with its ``append`` and ``last_chunk`` flags."""
    message: Message | None = None
    """The completed status message, or the direct reply when ``direct``."""
    direct: bool = False


# --- JSON <-> protobuf -------------------------------------------------------------


def from_value(value: Value) -> Any:
    """A protobuf ``Value`` as plain JSON; whole numbers come back as ``int``."""
    return _ints(MessageToDict(value))


def _ints(obj: Any) -> Any:
    if isinstance(obj, float) and obj.is_integer() and abs(obj) < _MAX_SAFE_INT:
        return int(obj)
    if isinstance(obj, dict):
        return {k: _ints(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_ints(v) for v in obj]
    return obj


_NON_FINITE: Final = {math.inf: "Infinity", -math.inf: "-Infinity"}


def _finite(obj: Any) -> Any:
    """``obj`` with each NaN or infinite float replaced by its name (``"NaN"``,
    ``"Infinity"``, ``"-Infinity"``, as proto3 JSON spells them): JSON has no such numbers,
    and a protobuf ``Value`` holding one cannot be serialized."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "NaN" if math.isnan(obj) else _NON_FINITE[obj]
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def _value(obj: Any) -> Value:
    return ParseDict(_finite(obj), Value())


def _struct(obj: Mapping[str, Any]) -> Struct:
    struct = Struct()
    struct.update(_finite(dict(obj)))
    return struct


def message_json(message: Message) -> dict[str, Any]:
    """The message in the spec's JSON form (camelCase keys, as on the wire)."""
    as_json: dict[str, Any] = _ints(MessageToDict(message))
    return as_json


# --- Inbound: message -> job -------------------------------------------------------


def skill_of(message: Message, default: str | None) -> str | None:
    """The skill a message asks for: its metadata ``skill``, else ``default``."""
    if message.HasField("metadata") and SKILL_KEY in message.metadata.fields:
        value = message.metadata.fields[SKILL_KEY]
        if value.WhichOneof("kind") == "string_value" and value.string_value:
            return str(value.string_value)
        raise InvalidMessageError("metadata 'skill' must be a non-empty string")
    return default or None


def _text_of(message: Message) -> str:
    return "\n".join(part.text for part in message.parts if part.WhichOneof("content") == "text")


def payload_of(message: Message) -> dict[str, Any]:
    """The job payload: the first data part (a JSON object), else ``{"text": ...}``.

    Raises:
        InvalidMessageError: the first data part is not a JSON object, or the message
            has neither a data part nor text.
    """
    for part in message.parts:
        if part.WhichOneof("content") == "data":
            payload = from_value(part.data)
            if not isinstance(payload, dict):
                raise InvalidMessageError("the data part must hold a JSON object (the payload)")
            return payload
    text = _text_of(message)
    if text:
        return {"text": text}
    raise InvalidMessageError("the message has no data part and no text: nothing to run")


def resume_value_of(message: Message) -> Any:
    """The answer a message gives to a waiting job: its first data part, else its text."""
    for part in message.parts:
        if part.WhichOneof("content") == "data":
            return from_value(part.data)
    return _text_of(message)


# --- Outbound: job -> task ---------------------------------------------------------


def task_state(status: str, error: Mapping[str, Any] | None = None) -> TaskState:
    """The A2A task state of a job status (a refusal error makes FAILED ``rejected``)."""
    state = _STATE_OF_STATUS.get(status, TaskState.TASK_STATE_WORKING)
    if (
        state == TaskState.TASK_STATE_FAILED
        and error
        and str(error.get("type", "")) in REJECTING_ERRORS
    ):
        return TaskState.TASK_STATE_REJECTED
    return state


def agent_message(
    task_id: str, context_id: str, message_id: str, parts: Iterable[Part], **metadata: Any
) -> Message:
    """A message from us (role agent) in a task."""
    message = Message(
        message_id=message_id,
        task_id=task_id,
        context_id=context_id,
        role=Role.ROLE_AGENT,
        parts=list(parts),
    )
    if metadata:
        message.metadata.CopyFrom(_struct(metadata))
    return message


def rejection(task_id: str, context_id: str, reason: str, *, now_ms: int) -> TaskStatusUpdateEvent:
    """The status update that rejects a message the gateway cannot turn into a job."""
    status = TaskStatus(
        state=TaskState.TASK_STATE_REJECTED,
        message=agent_message(task_id, context_id, f"{task_id}:rejected", [Part(text=reason)]),
    )
    status.timestamp.FromMilliseconds(now_ms)
    return TaskStatusUpdateEvent(task_id=task_id, context_id=context_id, status=status)


def refusal(
    task_id: str, context_id: str, error: Mapping[str, Any], *, now_ms: int
) -> TaskStatusUpdateEvent:
    """The status update ending a task whose submit the coordinator refused before it
    recorded a job (``rejected``, or ``failed`` for an error that is not a refusal)."""
    update = rejection(
        task_id, context_id, f"{error.get('type')}: {error.get('message')}", now_ms=now_ms
    )
    update.status.state = task_state("FAILED", error)
    return update


def _result_text(result: Any) -> str | None:
    if isinstance(result, str):
        return result
    if isinstance(result, dict):
        for key in ("text", "result"):
            if isinstance(result.get(key), str):
                return str(result[key])
    return None


def _parts(spec: Any, what: str) -> list[Part]:
    """Parts from a handler's answer: a string, one part, or a list of parts (spec JSON)."""
    if isinstance(spec, str):
        return [Part(text=spec)]
    if isinstance(spec, dict) and "parts" in spec:
        spec = spec["parts"]
    if isinstance(spec, dict):
        spec = [spec]
    if not isinstance(spec, list) or not spec:
        raise InvalidMessageError(f"{what}: parts must be a string, a part or a list of parts")
    parts = []
    for i, item in enumerate(spec):
        if isinstance(item, str):
            parts.append(Part(text=item))
            continue
        if not isinstance(item, dict):
            raise InvalidMessageError(f"{what}: part {i} is not an object")
        if "raw" in item and isinstance(item["raw"], str):
            try:
                base64.b64decode(item["raw"], validate=True)
            except (binascii.Error, ValueError) as e:
                raise InvalidMessageError(f"{what}: part {i} 'raw' is not base64") from e
        try:
            part = ParseDict(_finite(item), Part())
        except ParseError as e:
            raise InvalidMessageError(f"{what}: part {i}: {e}") from e
        if part.WhichOneof("content") is None:
            raise InvalidMessageError(f"{what}: part {i} has no text, raw, url or data")
        parts.append(part)
    return parts


def answer_of(task_id: str, context_id: str, cursor: str, result: Any) -> Answer:
    """How a job's result answers the task.

    A plain result becomes one artifact ``result``: a data part with the result, plus a
    text part where the result has text (a string, or a string under ``text`` or
    ``result``). A result holding ``"a2a": {...}`` shapes the answer itself:
    ``artifacts`` (each ``{"parts": [...], "name", "description", "artifactId",
    "metadata", "append", "lastChunk"}``), ``status_message`` (the completed task's status
    message) or ``message`` (answer with this Message instead of a Task); parts are in the
    spec's JSON form, a string is one text part. An artifact with ``append`` adds its
    parts to one given earlier in the same answer (same ``artifactId``).

    Raises:
        InvalidMessageError: the ``a2a`` answer is malformed.
    """
    msg_id = f"{task_id}:{cursor}"
    shape = result.get(A2A_RESULT_KEY) if isinstance(result, dict) else None
    if shape is None:
        parts = [Part(data=_value(result))]
        text = _result_text(result)
        if text is not None:
            parts.append(Part(text=text))
        return Answer(
            artifacts=[
                (Artifact(artifact_id=f"{task_id}:result", name="result", parts=parts), False, True)
            ]
        )
    if not isinstance(shape, dict):
        raise InvalidMessageError("the result's 'a2a' answer must be an object")
    unknown = set(shape) - {"artifacts", "message", "status_message"}
    if unknown:
        raise InvalidMessageError(f"the 'a2a' answer has unknown keys {sorted(unknown)}")
    if "message" in shape:
        if set(shape) != {"message"}:
            raise InvalidMessageError("an 'a2a' 'message' answer stands alone (no artifacts)")
        parts = _parts(shape["message"], "a2a.message")
        return Answer(message=agent_message(task_id, context_id, msg_id, parts), direct=True)
    artifacts = []
    raw_artifacts = shape.get("artifacts", [])
    if not isinstance(raw_artifacts, list):
        raise InvalidMessageError("a2a.artifacts must be a list")
    given: set[str] = set()
    for i, spec in enumerate(raw_artifacts):
        if not isinstance(spec, dict):
            raise InvalidMessageError(f"a2a.artifacts[{i}] is not an object")
        what = f"a2a.artifacts[{i}]"
        artifact_id = str(spec.get("artifactId") or f"{task_id}:artifact:{i}")
        if spec.get("append") and artifact_id not in given:
            raise InvalidMessageError(
                f"{what}: 'append' adds to an artifact given earlier in the answer, "
                f"and none has artifactId {artifact_id!r}"
            )
        given.add(artifact_id)
        artifact = Artifact(
            artifact_id=artifact_id,
            name=str(spec.get("name", "")),
            description=str(spec.get("description", "")),
            parts=_parts(spec.get("parts"), what),
        )
        if isinstance(spec.get("metadata"), dict):
            artifact.metadata.CopyFrom(_struct(spec["metadata"]))
        artifacts.append((artifact, bool(spec.get("append")), bool(spec.get("lastChunk", True))))
    message = None
    if "status_message" in shape:
        parts = _parts(shape["status_message"], "a2a.status_message")
        message = agent_message(task_id, context_id, msg_id, parts)
    return Answer(artifacts=artifacts, message=message)


def _error_text(error: Mapping[str, Any] | None) -> str:
    if not error:
        return "the job failed"
    kind, text = str(error.get("type", "")), str(error.get("message", ""))
    return f"{kind}: {text}" if kind and text else (text or kind or "the job failed")


def _interrupt_parts(interrupts: Sequence[Any]) -> list[Part]:
    parts = []
    for item in interrupts:
        value = item.get("value") if isinstance(item, dict) else item
        if isinstance(value, str):
            parts.append(Part(text=value))
        else:
            parts.append(Part(data=_value(value)))
    return parts or [Part(text="input required")]


def _status_update(
    task_id: str,
    context_id: str,
    event: JobEvent,
    state: TaskState,
    message: Message | None = None,
    **metadata: Any,
) -> TaskStatusUpdateEvent:
    status = TaskStatus(state=state)
    if message is not None:
        status.message.CopyFrom(message)
    status.timestamp.FromMilliseconds(event.ms)
    update = TaskStatusUpdateEvent(task_id=task_id, context_id=context_id, status=status)
    update.metadata.CopyFrom(_struct({CURSOR_KEY: event.id, **metadata}))
    return update


def events_for(
    task_id: str, context_id: str, event: JobEvent, state: TaskState
) -> list[TaskStatusUpdateEvent | TaskArtifactUpdateEvent]:
    """The A2A events one job-log event becomes, given the task's current ``state``.

    A status event that changes nothing a client sees (``working`` again, ``submitted``
    again) becomes nothing; so does anything after a terminal state. A final COMPLETED
    becomes its answer's artifact updates, then the completed status update (whose
    message is the direct reply when the handler answered with a Message).
    """
    if state in TERMINAL_STATES:
        return []
    msg_id = f"{task_id}:{event.id}"
    if event.kind == "update":
        return []  # an agent's internal state after a super-step: not the client's business
    if event.kind != "status":
        parts = [Part(data=_value(dict(event.data)))]
        text = event.data.get("text") or event.data.get("message")
        if isinstance(text, str):
            parts.insert(0, Part(text=text))
        progress = agent_message(task_id, context_id, msg_id, parts, kind=event.kind)
        return [_status_update(task_id, context_id, event, TaskState.TASK_STATE_WORKING, progress)]
    status = str(event.data.get("status", ""))
    error = event.data.get("error")
    new_state = task_state(status, error if isinstance(error, dict) else None)
    if new_state == TaskState.TASK_STATE_SUBMITTED and state not in _BEFORE_WORK:
        new_state = TaskState.TASK_STATE_WORKING  # PENDING again: resumed, on its way back
    if new_state == TaskState.TASK_STATE_INPUT_REQUIRED:
        interrupts = event.data.get("interrupts")
        ids = [i.get("id") for i in interrupts or [] if isinstance(i, dict)]
        question = agent_message(
            task_id,
            context_id,
            msg_id,
            _interrupt_parts(interrupts if isinstance(interrupts, list) else []),
            interrupts=ids,
        )
        return [_status_update(task_id, context_id, event, new_state, question)]
    if new_state == state:
        return []
    if new_state == TaskState.TASK_STATE_COMPLETED:
        try:
            answer = answer_of(task_id, context_id, event.id, event.data.get("result"))
        except InvalidMessageError as e:
            failed = agent_message(
                task_id,
                context_id,
                msg_id,
                [Part(text=f"the handler's A2A answer is malformed: {e}")],
            )
            return [_status_update(task_id, context_id, event, TaskState.TASK_STATE_FAILED, failed)]
        events: list[TaskStatusUpdateEvent | TaskArtifactUpdateEvent] = [
            TaskArtifactUpdateEvent(
                task_id=task_id,
                context_id=context_id,
                artifact=artifact,
                append=append,
                last_chunk=last_chunk,
            )
            for artifact, append, last_chunk in answer.artifacts
        ]
        extra = {ANSWER_KEY: "message"} if answer.direct else {}
        events.append(
            _status_update(task_id, context_id, event, new_state, answer.message, **extra)
        )
        return events
    if new_state in (TaskState.TASK_STATE_FAILED, TaskState.TASK_STATE_REJECTED):
        why = agent_message(
            task_id,
            context_id,
            msg_id,
            [Part(text=_error_text(error if isinstance(error, dict) else None))],
            error=error if isinstance(error, dict) else {},
        )
        return [_status_update(task_id, context_id, event, new_state, why)]
    return [_status_update(task_id, context_id, event, new_state)]


# --- Folding events into a task ----------------------------------------------------


def cursor_of_task(task: Task) -> str | None:
    """How far ``task`` has folded its job's log (its metadata ``cursor``), if at all."""
    if task.HasField("metadata") and CURSOR_KEY in task.metadata.fields:
        value: str = task.metadata.fields[CURSOR_KEY].string_value
        return value or None
    return None


def apply(task: Task, event: Event) -> None:
    """Apply one event to ``task`` in place, as the SDK's task manager does.

    A status update moves the previous status message into the history, merges its
    metadata into the task's and replaces the status; an artifact update adds, replaces
    or (``append``) extends an artifact.
    """
    if isinstance(event, TaskStatusUpdateEvent):
        if task.status.HasField("message"):
            task.history.append(task.status.message)
        if event.HasField("metadata"):
            task.metadata.MergeFrom(event.metadata)
        task.status.CopyFrom(event.status)
    elif isinstance(event, TaskArtifactUpdateEvent):
        if event.append and not any(
            a.artifact_id == event.artifact.artifact_id for a in task.artifacts
        ):
            return  # a chunk whose first part was folded before this log window: keep what we have
        append_artifact_to_task(task, event)


def fold(task: Task, job_events: Iterable[JobEvent]) -> str | None:
    """Fold job-log events into ``task`` in place; returns the last cursor seen (or None)."""
    last = None
    for job_event in job_events:
        last = job_event.id
        for event in events_for(task.id, task.context_id, job_event, task.status.state):
            apply(task, event)
    return last
