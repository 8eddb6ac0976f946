"""The example agent: a tool-using assistant whose answer a person approves.

A LangGraph graph, run as a job of task type ``assistant``::

    START -> model --(tool calls)--> tools -> model ... --(no tool calls)--> review -> END

* ``model`` asks the chat model, which may call the tools ``calculator`` and ``lookup_price``;
* ``tools`` runs the calls and reports each one as a custom progress event;
* ``review`` parks the job with ``interrupt({"question": ..., "proposed": draft})`` until
  ``resume_job(job_id, value)``: ``{"approved": true}``, ``true`` or ``"yes"`` releases the
  draft as the answer; anything else declines it (``{"approved": false, "reason": "..."}``).

The chat model comes from the environment, built on first use (not at import)::

    AGENTS_ASSISTANT_MODEL=fake                                    # default, offline
    AGENTS_ASSISTANT_MODEL=langchain_openai:ChatOpenAI             # any LangChain chat model
    AGENTS_ASSISTANT_MODEL_KWARGS='{"model": "gpt-4o-mini", "temperature": 0}'

``fake`` is :class:`ScriptedChatModel`, a deterministic model for demos and tests: it calls
the calculator for each arithmetic expression in the request (``what is 2+3``) and
``lookup_price`` for each ``price of <item>``, then answers from the tool results.

Copy this module to write your own agent: a payload model, a state, nodes, and a function
decorated with ``@agent`` that returns the uncompiled ``StateGraph``.
"""

from __future__ import annotations

import ast
import functools
import importlib
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Literal, NotRequired, TypedDict

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.fake_chat_models import ParrotFakeChatModel
from langchain_core.messages import (
    AIMessage,
    AnyMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolCall,
    ToolMessage,
)
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool, tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import interrupt
from pydantic import AliasChoices, BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from project.core.errors import ConfigurationError
from project.worker.agents import agent
from project.worker.handlers import RetryPolicy

__all__ = [
    "ASSISTANT_TYPES",
    "TOOLS",
    "AssistantRequest",
    "AssistantSettings",
    "AssistantState",
    "ScriptedChatModel",
    "assistant",
    "build_assistant_graph",
    "calculator",
    "is_approval",
    "load_chat_model",
    "lookup_price",
]

SYSTEM_PROMPT = (
    "You are a careful assistant. Use the calculator for arithmetic and lookup_price for "
    "prices; never guess a number. Answer in one short sentence."
)
REVIEW_QUESTION = "Send this answer?"


# --- payload, state and settings ---------------------------------------------------------


class AssistantRequest(BaseModel):
    """The job's payload: what the user asks."""

    model_config = ConfigDict(extra="forbid")

    request: str = Field(
        min_length=1,
        max_length=2000,
        description="The user's question.",
        # An A2A message's text parts arrive as {"text": ...}: the same question.
        validation_alias=AliasChoices("request", "text"),
    )


class AssistantState(TypedDict):
    """The graph's state. The input is ``AssistantRequest(...).model_dump(mode="json")``."""

    request: str
    messages: Annotated[list[AnyMessage], add_messages]
    answer: NotRequired[str]
    approved: NotRequired[bool]


ASSISTANT_TYPES: tuple[type, ...] = (HumanMessage, AIMessage, ToolMessage)
"""The classes the state holds, which the strict checkpoint serializer must rebuild."""


class AssistantSettings(BaseSettings):
    """Which chat model the assistant uses (prefix ``AGENTS_ASSISTANT_``, ``.env`` read)."""

    model_config = SettingsConfigDict(
        env_prefix="AGENTS_ASSISTANT_", env_file=".env", extra="ignore", frozen=True
    )

    model: str = Field(
        default="fake",
        description='"fake" (offline, deterministic) or "package.module:ChatModelClass".',
    )
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="JSON object of keyword arguments for the model class. Keep API keys in "
        "the provider's own variable (e.g. OPENAI_API_KEY), not here.",
    )


# --- tools ---------------------------------------------------------------------------------

PRICES: Mapping[str, str] = {"widget": "2.50 EUR", "gadget": "12.00 EUR", "gizmo": "7.25 EUR"}

_BINARY: Mapping[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}
_UNARY: Mapping[type[ast.unaryop], Callable[[float], float]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}


def _evaluate(node: ast.expr) -> float:
    # Walk the syntax tree ourselves: eval() would run anything, and ** could hang the worker.
    number = node.value if isinstance(node, ast.Constant) else None
    if isinstance(number, int | float) and not isinstance(number, bool):
        return number
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return _BINARY[type(node.op)](_evaluate(node.left), _evaluate(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    raise ValueError(f"not plain arithmetic: {ast.unparse(node)!r}")


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression of numbers, + - * / and parentheses, e.g. 3 * 2.5."""
    try:
        value = _evaluate(ast.parse(expression, mode="eval").body)
    except SyntaxError as exc:
        raise ValueError(f"not plain arithmetic: {expression!r}") from exc
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


@tool
def lookup_price(item: str) -> str:
    """Look up the unit price of a catalogue item (widget, gadget or gizmo)."""
    key = item.strip().lower()
    price = PRICES.get(key) or PRICES.get(key.removesuffix("s"))
    return price or f"unknown item {item!r}; the catalogue has {', '.join(PRICES)}"


TOOLS: Sequence[BaseTool] = (calculator, lookup_price)


# --- the deterministic chat model -----------------------------------------------------------

FAKE_SCRIPT: Mapping[str, tuple[str, str]] = {
    "calculator": (r"\d+(?:\.\d+)?(?:\s*[-+*/]\s*\d+(?:\.\d+)?)+", "expression"),
    "lookup_price": (r"price of (?:an? |the )?([a-z]+)", "item"),
}
"""What :class:`ScriptedChatModel` calls: tool name -> (regex on the request, argument name).
The regex's first group (or whole match) is the argument's value."""


class ScriptedChatModel(ParrotFakeChatModel):
    """A deterministic chat model that calls tools, for offline runs and tests.

    Its reply depends only on the messages it is given:

    * the last message is not a tool result: one call of each bound tool per match of that
      tool's regex in :data:`FAKE_SCRIPT`, or, with no match, a plain answer;
    * the last message is a tool result: an answer listing ``<argument> = <result>`` for the
      calls of the last model turn.
    """

    script: dict[str, tuple[str, str]] = Field(default_factory=lambda: dict(FAKE_SCRIPT))
    """Tool name -> (regex, argument name)."""
    tool_names: tuple[str, ...] = ()
    """The tools bound with :meth:`bind_tools`; only these are called."""

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Return a copy of this model that may call ``tools``."""
        names = tuple(convert_to_openai_tool(t)["function"]["name"] for t in tools)
        return self.model_copy(update={"tool_names": names})

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if not messages:
            raise ValueError("ScriptedChatModel needs at least one message")
        if isinstance(messages[-1], ToolMessage):
            reply = AIMessage(content=_summarize(messages))
        else:
            calls = self._tool_calls(messages[-1].text, id_prefix=f"call_{len(messages)}")
            text = "" if calls else f"I have nothing to compute or look up in: {messages[-1].text}"
            reply = AIMessage(content=text, tool_calls=calls)
        return ChatResult(generations=[ChatGeneration(message=reply)])

    def _tool_calls(self, text: str, *, id_prefix: str) -> list[ToolCall]:
        calls: list[ToolCall] = []
        for name in self.tool_names:
            if name not in self.script:
                continue
            pattern, argument = self.script[name]
            for match in re.finditer(pattern, text, flags=re.IGNORECASE):
                value = match.group(1) if match.groups() else match.group(0)
                calls.append(
                    ToolCall(name=name, args={argument: value}, id=f"{id_prefix}_{len(calls)}")
                )
        return calls

    @property
    def _llm_type(self) -> str:
        return "scripted-fake-chat-model"


def _summarize(messages: Sequence[BaseMessage]) -> str:
    results = {m.tool_call_id: m.text for m in messages if isinstance(m, ToolMessage)}
    turn = next((m for m in reversed(messages) if isinstance(m, AIMessage) and m.tool_calls), None)
    if turn is None:
        return "; ".join(results.values())
    return "; ".join(
        f"{next(iter(call['args'].values()), '')} = {results.get(call['id'] or '', '?')}"
        for call in turn.tool_calls
    )


def load_chat_model(spec: str = "fake", kwargs: Mapping[str, Any] | None = None) -> BaseChatModel:
    """Build the chat model ``spec`` names: ``"fake"`` or ``"package.module:ClassName"``.

    Raises:
        ConfigurationError: the class cannot be imported, is not a LangChain chat model, or
            refuses ``kwargs``.
    """
    cls: object = ScriptedChatModel
    if spec != "fake":
        module_name, _, class_name = spec.partition(":")
        if not module_name or not class_name:
            raise ConfigurationError(
                f'assistant model {spec!r}: use "fake" or "package.module:Class"'
            )
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as exc:
            raise ConfigurationError(f"cannot import assistant model {spec!r}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, BaseChatModel)):
        raise ConfigurationError(f"assistant model {spec!r} is not a LangChain chat model")
    try:
        return cls(**(kwargs or {}))
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"cannot build assistant model {spec!r}: {exc}") from exc


# --- the graph -------------------------------------------------------------------------------


def is_approval(decision: object) -> bool:
    """Whether a resume value approves: ``True``, ``"yes"``/``"approve"``/``"ok"`` (any case),
    or a mapping whose ``approved`` is one of those. Anything else declines."""
    if isinstance(decision, bool):
        return decision
    if isinstance(decision, str):
        return decision.strip().lower() in {"yes", "y", "approve", "approved", "ok"}
    if isinstance(decision, Mapping):
        return is_approval(decision.get("approved", False))
    return False


def build_assistant_graph(model: BaseChatModel | None = None) -> StateGraph[AssistantState]:
    """The assistant's graph, uncompiled.

    Args:
        model: The chat model. Default: the one :class:`AssistantSettings` names, built (and
            its tools bound) on the graph's first model call, once per graph.
    """

    @functools.cache
    def chat_model() -> Runnable[LanguageModelInput, AIMessage]:
        if model is not None:
            return model.bind_tools(TOOLS)
        settings = AssistantSettings()
        return load_chat_model(settings.model, settings.model_kwargs).bind_tools(TOOLS)

    def call_model(state: AssistantState) -> dict[str, list[AnyMessage]]:
        # The first turn turns the request into the conversation's first message.
        new: list[AnyMessage] = [] if state["messages"] else [HumanMessage(state["request"])]
        history = [*state["messages"], *new]
        reply = chat_model().invoke([SystemMessage(SYSTEM_PROMPT), *history])
        return {"messages": [*new, reply]}

    def call_tools(state: AssistantState) -> dict[str, list[AnyMessage]]:
        write_event = get_stream_writer()
        last = state["messages"][-1]
        calls = last.tool_calls if isinstance(last, AIMessage) else []
        results: list[AnyMessage] = []
        for call in calls:
            write_event({"tool": call["name"], "args": call["args"]})
            results.append(_run_tool(call))
            write_event({"tool": call["name"], "result": results[-1].text})
        return {"messages": results}

    def review(state: AssistantState) -> dict[str, Any]:
        # Everything before interrupt() runs again on resume, so nothing here has side effects.
        draft = state["messages"][-1].text
        decision = interrupt({"question": REVIEW_QUESTION, "proposed": draft})
        if is_approval(decision):
            return {"answer": draft, "approved": True}
        reason = decision.get("reason") if isinstance(decision, Mapping) else None
        declined = "Declined: the reviewer did not approve this answer."
        return {"answer": f"{declined} {reason}" if reason else declined, "approved": False}

    builder = StateGraph(AssistantState)
    builder.add_node("model", call_model)
    builder.add_node("tools", call_tools)
    builder.add_node("review", review)
    builder.add_edge(START, "model")
    builder.add_conditional_edges("model", _after_model)
    builder.add_edge("tools", "model")
    builder.add_edge("review", END)
    return builder


def _after_model(state: AssistantState) -> Literal["tools", "review"]:
    last = state["messages"][-1]
    return "tools" if isinstance(last, AIMessage) and last.tool_calls else "review"


def _run_tool(call: ToolCall) -> ToolMessage:
    found = next((t for t in TOOLS if t.name == call["name"]), None)
    try:
        if found is None:
            raise ValueError(f"no tool named {call['name']!r}")
        content = str(found.invoke(call["args"]))
    except (ValueError, ArithmeticError) as exc:
        # Tell the model what went wrong, so it can try again, instead of failing the job.
        return ToolMessage(
            content=f"error: {exc}",
            tool_call_id=call["id"] or "",
            name=call["name"],
            status="error",
        )
    return ToolMessage(content=content, tool_call_id=call["id"] or "", name=call["name"])


# --- registration ----------------------------------------------------------------------------


@agent(
    "assistant",
    payload=AssistantRequest,
    description="Answers with a calculator and a price list; a person approves the answer.",
    tags=("llm",),
    output="answer",
    # Transient failures of a real model's API. Add your provider's own, e.g.
    # openai.RateLimitError; a wrong setting (ConfigurationError) is not retried.
    retry=RetryPolicy(
        on=(TimeoutError, ConnectionError), max_retries=3, backoff_s=0.5, max_backoff_s=10
    ),
    time_limit_s=120,
    types=ASSISTANT_TYPES,
)
def assistant() -> StateGraph[AssistantState]:
    """The ``assistant`` agent: the graph of :func:`build_assistant_graph`, default model."""
    return build_assistant_graph()
