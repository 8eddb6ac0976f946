"""The example agent (``project.worker.assistant``) run as a graph, without Celery.

Covers the tools, the deterministic chat model and its configuration, the model-and-tools
loop with its progress events, the approval interrupt and both ways to resume it, and one
run through ``RedisSaver`` with the strict serializer on a real redis-server, resumed by a
new saver and graph as another worker process would.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any, cast

import pytest
import redis
from langchain_core.language_models.fake_chat_models import ParrotFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command
from pydantic import ValidationError

from project.core.checkpoint import RedisSaver, strict_serializer
from project.core.errors import ConfigurationError
from project.worker import HANDLERS
from project.worker.assistant import (
    ASSISTANT_TYPES,
    TOOLS,
    AssistantRequest,
    ScriptedChatModel,
    assistant,
    build_assistant_graph,
    calculator,
    is_approval,
    load_chat_model,
    lookup_price,
)

pytestmark = pytest.mark.timeout(60)

Graph = CompiledStateGraph[Any, Any, Any, Any]


def compile_graph(checkpointer: BaseCheckpointSaver[Any] | None = None) -> Graph:
    return build_assistant_graph().compile(checkpointer=checkpointer or InMemorySaver())


def config() -> RunnableConfig:
    return {"configurable": {"thread_id": f"job-{uuid.uuid4()}"}}


def start(graph: Graph, request: str, cfg: RunnableConfig) -> list[dict[str, Any]]:
    """Run until the approval interrupt; return the custom progress events."""
    payload = AssistantRequest(request=request).model_dump(mode="json")
    chunks: Iterator[Any] = graph.stream(payload, cfg, stream_mode=["updates", "custom"])
    return [event for mode, event in chunks if mode == "custom"]


# --- registration ----------------------------------------------------------------------------


def test_assistant_is_registered_as_an_agent() -> None:
    registered = HANDLERS["assistant"]
    assert registered.kind == "agent"
    assert registered.fn is cast(object, assistant)
    assert registered.payload_model is AssistantRequest
    assert registered.output == "answer"
    assert registered.types == ASSISTANT_TYPES
    assert registered.retry is not None and TimeoutError in registered.retry.on
    assert registered.time_limit_s == 120
    # What the worker does: compile the builder, run the payload's JSON through it.
    graph = assistant().compile(checkpointer=InMemorySaver())
    payload = AssistantRequest(request="what is 6*7").model_dump(mode="json")
    result = graph.invoke(payload, config())
    assert result["__interrupt__"][0].value["proposed"] == "6*7 = 42"


def test_payload_is_validated() -> None:
    with pytest.raises(ValueError, match="request"):
        AssistantRequest.model_validate({"request": ""})
    with pytest.raises(ValueError, match="extra"):
        AssistantRequest.model_validate({"request": "hi", "model": "gpt"})


# --- tools -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "value"),
    [("2+3", "5"), ("3 * 2.5", "7.5"), ("(1 + 2) * -4", "-12"), ("7 / 2", "3.5"), ("6/3", "2")],
)
def test_calculator_evaluates_arithmetic(expression: str, value: str) -> None:
    assert calculator.invoke({"expression": expression}) == value


@pytest.mark.parametrize(
    "expression", ["__import__('os').getpid()", "2 ** 99999999", "True + 1", "x + 1", "2 +"]
)
def test_calculator_refuses_anything_but_arithmetic(expression: str) -> None:
    with pytest.raises(ValueError, match="not plain arithmetic"):
        calculator.invoke({"expression": expression})


def test_lookup_price_reads_the_catalogue() -> None:
    assert lookup_price.invoke({"item": "Widget"}) == "2.50 EUR"
    assert lookup_price.invoke({"item": "gadgets"}) == "12.00 EUR"
    assert lookup_price.invoke({"item": "sprocket"}).startswith("unknown item 'sprocket'")


# --- the deterministic model -----------------------------------------------------------------


def test_scripted_model_calls_only_bound_tools_deterministically() -> None:
    prompt = [SystemMessage("be brief"), HumanMessage("what is 2+3 and the price of a gizmo?")]
    bound = ScriptedChatModel().bind_tools(TOOLS)
    first, second = bound.invoke(prompt), bound.invoke(prompt)

    assert [(c["name"], c["args"], c["id"]) for c in first.tool_calls] == [
        ("calculator", {"expression": "2+3"}, "call_2_0"),
        ("lookup_price", {"item": "gizmo"}, "call_2_1"),
    ]
    assert [(c["name"], c["args"], c["id"]) for c in second.tool_calls] == [
        (c["name"], c["args"], c["id"]) for c in first.tool_calls
    ]
    assert first.content == second.content == ""
    # Without bound tools it answers directly.
    unbound = ScriptedChatModel().invoke(prompt)
    assert unbound.tool_calls == []
    assert unbound.content == "I have nothing to compute or look up in: " + prompt[1].text


def test_scripted_model_answers_from_tool_results() -> None:
    call = {"name": "calculator", "args": {"expression": "2+3"}, "id": "c0"}
    messages = [
        HumanMessage("what is 2+3"),
        AIMessage("", tool_calls=[call]),
        ToolMessage("5", tool_call_id="c0"),
    ]
    reply = ScriptedChatModel().bind_tools(TOOLS).invoke(messages)
    assert reply.content == "2+3 = 5"
    assert reply.tool_calls == []


def test_load_chat_model_by_name() -> None:
    assert isinstance(load_chat_model("fake"), ScriptedChatModel)
    parrot = load_chat_model(
        "langchain_core.language_models.fake_chat_models:ParrotFakeChatModel",
        {"disable_streaming": True},
    )
    assert isinstance(parrot, ParrotFakeChatModel)
    assert parrot.disable_streaming is True


@pytest.mark.parametrize(
    ("spec", "kwargs", "error"),
    [
        ("ChatOpenAI", None, "package.module:Class"),
        ("no_such_package.chat:Model", None, "cannot import"),
        ("json:JSONDecoder", None, "not a LangChain chat model"),
        ("fake", {"no_such_field": 1, "script": "not a mapping"}, "cannot build"),
    ],
)
def test_load_chat_model_refuses_bad_configuration(
    spec: str, kwargs: dict[str, Any] | None, error: str
) -> None:
    with pytest.raises(ConfigurationError, match=error):
        load_chat_model(spec, kwargs)


def test_model_comes_from_the_environment_on_first_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTS_ASSISTANT_MODEL", "no_such_package.chat:Model")
    graph = compile_graph()  # building and compiling never reads the setting
    with pytest.raises(ConfigurationError, match="no_such_package"):
        graph.invoke({"request": "what is 1+1"}, config())

    monkeypatch.setenv("AGENTS_ASSISTANT_MODEL", "fake")
    monkeypatch.setenv("AGENTS_ASSISTANT_MODEL_KWARGS", '{"script": {}}')  # calls no tool
    result = compile_graph().invoke({"request": "what is 1+1"}, config())
    assert [type(m) for m in result["messages"]] == [HumanMessage, AIMessage]
    assert result["__interrupt__"][0].value["proposed"].startswith("I have nothing to compute")


# --- the graph -------------------------------------------------------------------------------


def test_tools_run_and_the_proposal_is_interrupted() -> None:
    graph, cfg = compile_graph(), config()
    events = start(graph, "What is 12 * 3.5, and the price of a widget?", cfg)

    assert events == [
        {"tool": "calculator", "args": {"expression": "12 * 3.5"}},
        {"tool": "calculator", "result": "42"},
        {"tool": "lookup_price", "args": {"item": "widget"}},
        {"tool": "lookup_price", "result": "2.50 EUR"},
    ]
    state = graph.get_state(cfg)
    assert state.next == ("review",)
    assert [i.value for i in state.interrupts] == [
        {"question": "Send this answer?", "proposed": "12 * 3.5 = 42; widget = 2.50 EUR"}
    ]
    kinds = [type(m).__name__ for m in state.values["messages"]]
    assert kinds == ["HumanMessage", "AIMessage", "ToolMessage", "ToolMessage", "AIMessage"]
    assert "answer" not in state.values


def test_messages_stream_mode_keeps_tool_calls() -> None:
    # The worker may stream LLM tokens; a fake whose _stream dropped tool calls would break.
    graph, cfg = compile_graph(), config()
    modes = [
        mode for mode, _ in graph.stream({"request": "what is 1+1"}, cfg, stream_mode="messages")
    ]
    assert modes
    assert graph.get_state(cfg).values["messages"][2].content == "2"


@pytest.mark.parametrize("decision", [{"approved": True}, "yes", " Approve ", True])
def test_approval_releases_the_answer(decision: Any) -> None:
    graph, cfg = compile_graph(), config()
    start(graph, "what is 2+3", cfg)
    result = graph.invoke(Command(resume=decision), cfg)
    assert result["answer"] == "2+3 = 5"
    assert result["approved"] is True
    assert graph.get_state(cfg).next == ()


@pytest.mark.parametrize(
    ("decision", "answer"),
    [
        ({"approved": False, "reason": "Ask finance."}, "Ask finance."),
        ("no", "approve this answer."),
        ({"comment": "looks fine"}, "approve this answer."),  # no explicit approval declines
        ("maybe", "approve this answer."),
    ],
)
def test_rejection_declines(decision: Any, answer: str) -> None:
    graph, cfg = compile_graph(), config()
    start(graph, "what is 2+3", cfg)
    result = graph.invoke(Command(resume=decision), cfg)
    assert result["answer"].startswith("Declined: the reviewer did not approve this answer.")
    assert result["answer"].endswith(answer)
    assert "5" not in result["answer"]
    assert result["approved"] is False


def test_a_failing_tool_call_is_reported_to_the_model() -> None:
    graph, cfg = compile_graph(), config()
    start(graph, "what is 1/0", cfg)
    tool_message = graph.get_state(cfg).values["messages"][2]
    assert isinstance(tool_message, ToolMessage)
    assert tool_message.status == "error"
    assert graph.get_state(cfg).interrupts[0].value["proposed"] == "1/0 = error: division by zero"


def test_is_approval() -> None:
    assert [is_approval(v) for v in (True, "YES", "ok", {"approved": "y"})] == [True] * 4
    assert [is_approval(v) for v in (False, "nope", 1, {}, {"approved": 1}, [True])] == [False] * 6


# --- on Redis, strict ------------------------------------------------------------------------


@pytest.mark.integration
def test_state_round_trips_through_redis_saver_with_strict_serde(
    redis_client: redis.Redis,
) -> None:
    registered = HANDLERS["assistant"]

    def worker_graph() -> Graph:
        # As the worker compiles it: the strict serializer allows only the declared types.
        return assistant().compile(
            checkpointer=RedisSaver(redis_client, allowed_types=registered.types)
        )

    cfg = config()
    events = start(worker_graph(), "what is 2+3", cfg)
    assert events[0] == {"tool": "calculator", "args": {"expression": "2+3"}}

    # What a resuming worker reads back is rebuilt as message objects, not plain dicts.
    stored = RedisSaver(redis_client, serde=strict_serializer(ASSISTANT_TYPES)).get_tuple(cfg)
    assert stored is not None
    messages = stored.checkpoint["channel_values"]["messages"]
    assert [type(m) for m in messages] == [HumanMessage, AIMessage, ToolMessage, AIMessage]
    assert messages[1].tool_calls[0]["args"] == {"expression": "2+3"}

    # A new graph and saver, as another worker process would build, resume the thread with
    # the answer keyed by interrupt id.
    graph = worker_graph()
    (pending,) = graph.get_state(cfg).interrupts
    assert pending.value == {"question": "Send this answer?", "proposed": "2+3 = 5"}
    resumed = graph.invoke(Command(resume={pending.id: {"approved": True}}), cfg)
    assert resumed["answer"] == "2+3 = 5"
    assert resumed["approved"] is True


def test_an_a2a_text_message_is_the_request() -> None:
    """The gateway turns a message with text parts and no data part into ``{"text": ...}``:
    the assistant takes that text as the user's question."""
    assert AssistantRequest.model_validate({"text": "what is 2+3"}).request == "what is 2+3"
    assert AssistantRequest.model_validate({"request": "what is 2+3"}).request == "what is 2+3"
    with pytest.raises(ValidationError):
        AssistantRequest.model_validate({"text": ""})
