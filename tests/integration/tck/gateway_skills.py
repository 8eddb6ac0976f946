"""Skills for the gateway's integration tests and the A2A TCK, loaded by test workers
through ``AGENTS_HANDLER_MODULES=gateway_skills`` (kept in the tests, not the product).

* ``tck``: follows the TCK's message-id conventions (``scenarios/*.feature`` of
  a2aproject/a2a-tck): the prefix of the A2A message id picks the answer.
* ``gw_ask``: asks one question (input-required), answers with what it was told.
* ``gw_progress``: reports progress a few times, then completes.
* ``gw_whoami``: answers with the A2A message it was started by, as it saw it.
"""

from __future__ import annotations

import base64
import os
import time
from typing import Any, TypedDict

from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.types import interrupt
from pydantic import BaseModel, ConfigDict

from project.core.errors import JobRejectedError
from project.worker import agent, current_job, handler


class Anything(BaseModel):
    """Any payload (a text message arrives as ``{"text": ...}``)."""

    model_config = ConfigDict(extra="allow")
    text: str = ""


class TckState(TypedDict, total=False):
    text: str
    prefix: str
    message_id: str
    answer: Any
    result: Any


PREFIXES = (
    "tck-stream-artifact-chunked",
    "tck-stream-artifact-text",
    "tck-stream-artifact-file",
    "tck-stream-ordering-001",
    "tck-stream-001",
    "tck-stream-002",
    "tck-stream-003",
    "test-resubscribe-message-id",
    "tck-artifact-file-url",
    "tck-artifact-text",
    "tck-artifact-file",
    "tck-artifact-data",
    "tck-message-response",
    "tck-input-required",
    "tck-complete-task",
    "tck-reject-task",
)


def _text_artifact(text: str, **extra: Any) -> dict[str, Any]:
    return {"a2a": {"artifacts": [{"parts": [text], **extra}]}}


def _file(name: str, media_type: str, **content: Any) -> dict[str, Any]:
    return {
        "a2a": {"artifacts": [{"parts": [{**content, "mediaType": media_type, "filename": name}]}]}
    }


def _decide(state: TckState) -> TckState:
    message = current_job().a2a_message or {}
    message_id = str(message.get("messageId", ""))
    prefix = next((p for p in PREFIXES if message_id.startswith(p)), "")
    return {"prefix": prefix, "message_id": message_id}


def _act(state: TckState) -> TckState:
    prefix = state.get("prefix", "")
    if prefix == "tck-reject-task":
        raise JobRejectedError("rejected")
    if prefix == "tck-input-required":
        answer = interrupt("input required: send any message to complete the task")
        return {"result": {"a2a": {"status_message": f"received: {answer}"}}}
    if prefix == "test-resubscribe-message-id":
        get_stream_writer()({"text": "working"})
        time.sleep(2 * float(os.environ.get("TCK_STREAMING_TIMEOUT", "2")))
        return {"result": {"a2a": {"status_message": "done"}}}
    results: dict[str, Any] = {
        "tck-complete-task": {"a2a": {"status_message": "Hello from TCK"}},
        "tck-artifact-text": _text_artifact("Generated text content"),
        "tck-artifact-file": _file(
            "output.txt", "text/plain", raw=base64.b64encode(b"tck").decode()
        ),
        "tck-artifact-file-url": _file(
            "output.txt", "text/plain", url="https://example.com/output.txt"
        ),
        "tck-artifact-data": {
            "a2a": {"artifacts": [{"parts": [{"data": {"key": "value", "count": 42}}]}]}
        },
        "tck-message-response": {"a2a": {"message": "Direct message response"}},
        "tck-stream-001": _text_artifact("Stream hello from TCK"),
        "tck-stream-002": {"a2a": {}},
        "tck-stream-003": _text_artifact("Stream task lifecycle"),
        "tck-stream-ordering-001": _text_artifact("Ordered output"),
        "tck-stream-artifact-text": _text_artifact("Streamed text content"),
        "tck-stream-artifact-file": _file(
            "output.txt", "text/plain", raw=base64.b64encode(b"tck").decode()
        ),
        "tck-stream-artifact-chunked": {
            "a2a": {
                "artifacts": [
                    {"artifactId": "chunked", "parts": ["chunk-1 "], "lastChunk": False},
                    {"artifactId": "chunked", "parts": ["chunk-2"], "append": True},
                ]
            }
        },
    }
    default = {
        "a2a": {"status_message": f"Unhandled messageId prefix: {state.get('message_id', '')}"}
    }
    return {"result": results.get(prefix, default)}


@agent(
    "tck",
    payload=Anything,
    output="result",
    description="Answers the A2A TCK's messages",
    tags=("tck",),
)
def tck_agent() -> StateGraph:
    """Picks its answer by the message id's prefix (the TCK's convention)."""
    graph = StateGraph(TckState)
    graph.add_node("decide", _decide)
    graph.add_node("act", _act)
    graph.add_edge(START, "decide")
    graph.add_edge("decide", "act")
    graph.add_edge("act", END)
    return graph


class AskState(TypedDict, total=False):
    text: str
    answer: Any


def _ask(state: AskState) -> AskState:
    answer = interrupt(f"which colour for {state.get('text', '')}?")
    return {"answer": f"{state.get('text', '')} in {answer}"}


@agent("gw_ask", payload=Anything, output="answer", description="Asks which colour", tags=("test",))
def ask_agent() -> StateGraph:
    """One question, then the answer."""
    graph = StateGraph(AskState)
    graph.add_node("ask", _ask)
    graph.add_edge(START, "ask")
    graph.add_edge("ask", END)
    return graph


class Progress(BaseModel):
    steps: int = 3
    sleep_s: float = 0.2
    hold_file: str = ""
    """If set, the last step ends only once this file exists (the test's go-ahead)."""


class ProgressState(TypedDict, total=False):
    steps: int
    sleep_s: float
    hold_file: str
    done: int


def _work(state: ProgressState) -> ProgressState:
    write = get_stream_writer()
    for step in range(state["steps"]):
        time.sleep(state["sleep_s"])
        write({"text": f"step {step}", "step": step})
    deadline = time.monotonic() + 30
    while state.get("hold_file") and not os.path.exists(state["hold_file"]):
        if time.monotonic() > deadline:
            raise TimeoutError(f"nobody created {state['hold_file']}")
        time.sleep(0.02)
    return {"done": state["steps"]}


@agent("gw_progress", payload=Progress, description="Reports progress", tags=("test",))
def progress_agent() -> StateGraph:
    """Writes one progress event per step."""
    graph = StateGraph(ProgressState)
    graph.add_node("work", _work)
    graph.add_edge(START, "work")
    graph.add_edge("work", END)
    return graph


@handler(
    "gw_whoami", payload=Anything, description="Answers with the message it saw", tags=("test",)
)
def whoami(job: Anything) -> dict[str, Any]:
    """What a handler sees of the A2A message that started its job."""
    context = current_job()
    message = context.a2a_message or {}
    return {
        "message_id": message.get("messageId"),
        "context_id": message.get("contextId"),
        "task_id": message.get("taskId"),
        "parts": message.get("parts"),
        "owner": context.owner,
        "text": job.text,
    }
