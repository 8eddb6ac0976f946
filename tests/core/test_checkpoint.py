"""RedisSaver with real LangGraph graphs on a real redis-server, and its strict serializer.

Covers: a 4-node graph interrupted by ``interrupt()`` and resumed with ``Command(resume=...)``
(also by a new saver, as a new process would); the same history as ``InMemorySaver``;
unchanged channels not rewritten; trimming to ``keep_last``; ``expire_thread`` on every key
of a thread; the async API; and crafted checkpoint data that must neither import nor call
anything (the loads raise ``DisallowedTypeError``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import operator
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, TypedDict

import ormsgpack
import pytest
import redis
import redis.asyncio
from conftest import redis_url
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver, CheckpointTuple, empty_checkpoint
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.serde.jsonplus import (
    EXT_CONSTRUCTOR_KW_ARGS,
    EXT_CONSTRUCTOR_POS_ARGS,
    EXT_CONSTRUCTOR_SINGLE_ARG,
    EXT_METHOD_SINGLE_ARG,
    EXT_NUMPY_ARRAY,
    EXT_PYDANTIC_V2,
    JsonPlusSerializer,
)
from langgraph.checkpoint.serde.types import ERROR, INTERRUPT
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command, interrupt

from project.core.checkpoint import (
    CheckpointError,
    DisallowedTypeError,
    RedisSaver,
    StrictSerializer,
    strict_serializer,
    thread_keys,
)
from project.core.errors import ConfigurationError, StateError

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

DB = 15  # the redis_client fixture flushes it before each test


# --- graphs ----------------------------------------------------------------------------------


class Review(TypedDict):
    log: Annotated[list[str], operator.add]
    request: str
    decision: str


def plan(state: Review) -> dict[str, Any]:
    return {"log": [f"plan:{state['request']}"]}


def review(state: Review) -> dict[str, Any]:
    decision = interrupt({"question": f"approve {state['request']}?"})
    return {"log": ["review"], "decision": decision}


def act(state: Review) -> dict[str, Any]:
    return {"log": [f"act:{state['decision']}"]}


def report(state: Review) -> dict[str, Any]:
    return {"log": ["report"]}


def review_graph(checkpointer: BaseCheckpointSaver[Any]) -> CompiledStateGraph[Any, Any, Any, Any]:
    """plan -> review (interrupts) -> act -> report."""
    builder = StateGraph(Review)
    builder.add_node("plan", plan)
    builder.add_node("review", review)
    builder.add_node("act", act)
    builder.add_node("report", report)
    builder.add_edge(START, "plan")
    builder.add_edge("plan", "review")
    builder.add_edge("review", "act")
    builder.add_edge("act", "report")
    builder.add_edge("report", END)
    return builder.compile(checkpointer=checkpointer)


class Counter(TypedDict):
    n: int
    static: str
    trail: Annotated[list[int], operator.add]


def chain_graph(
    checkpointer: BaseCheckpointSaver[Any], steps: int
) -> CompiledStateGraph[Any, Any, Any, Any]:
    """``steps`` nodes in a row; each bumps ``n`` and appends to ``trail``; ``static`` stays."""
    builder = StateGraph(Counter)
    previous = START
    for i in range(steps):
        name = f"step{i}"
        builder.add_node(name, lambda s: {"n": s["n"] + 1, "trail": [s["n"]]})
        builder.add_edge(previous, name)
        previous = name
    builder.add_edge(previous, END)
    return builder.compile(checkpointer=checkpointer)


def nested_graph(checkpointer: BaseCheckpointSaver[Any]) -> CompiledStateGraph[Any, Any, Any, Any]:
    """outer -> inner subgraph (its own checkpoint namespace) -> done."""
    inner = StateGraph(Counter)
    inner.add_node("deep", lambda s: {"n": s["n"] + 10})
    inner.add_edge(START, "deep")
    outer = StateGraph(Counter)
    outer.add_node("first", lambda s: {"n": s["n"] + 1})
    outer.add_node("inner", inner.compile())
    outer.add_node("done", lambda s: {"trail": [s["n"]]})
    outer.add_edge(START, "first")
    outer.add_edge("first", "inner")
    outer.add_edge("inner", "done")
    return outer.compile(checkpointer=checkpointer)


def config(thread_id: str) -> RunnableConfig:
    return {"configurable": {"thread_id": thread_id}}


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(params=[False, True], ids=["bytes-client", "decoding-client"])
def client(redis_client: redis.Redis, request: pytest.FixtureRequest) -> Iterator[redis.Redis]:
    """A sync client on the flushed scratch database, with and without decode_responses."""
    own = redis.Redis.from_url(redis_url(DB), decode_responses=request.param)
    yield own
    own.close()


def saver_keys(inspect: redis.Redis, thread_id: str) -> set[str]:
    """Every key of the database that names the thread (found by SCAN, not by our helper)."""
    return {str(k) for k in inspect.scan_iter(match=f"*{{{thread_id}}}*", count=1000)}


# --- a real graph --------------------------------------------------------------------------


def test_graph_checkpoints_interrupt_and_resume(
    client: redis.Redis, redis_client: redis.Redis
) -> None:
    job_id = f"job-{uuid.uuid4()}"
    graph = review_graph(RedisSaver(client))

    first = graph.invoke({"log": [], "request": "deploy", "decision": ""}, config(job_id))
    assert [i.value for i in first["__interrupt__"]] == [{"question": "approve deploy?"}]
    assert first["log"] == ["plan:deploy"]

    # Checkpoints exist in Redis, under the thread's keys only.
    index, data, _refs, blobs, writes_index, writes = thread_keys(job_id)
    assert saver_keys(redis_client, job_id) == set(thread_keys(job_id))
    assert redis_client.zcard(index) == redis_client.hlen(data) == 3  # input, plan, review
    assert redis_client.hlen(blobs) > 0
    assert redis_client.zcard(writes_index) == redis_client.hlen(writes) > 0

    # The interrupt is a pending write of the newest checkpoint; the graph waits in review.
    state = graph.get_state(config(job_id))
    assert state.next == ("review",)
    assert state.values == {"log": ["plan:deploy"], "request": "deploy", "decision": ""}
    newest = RedisSaver(client).get_tuple(config(job_id))
    assert newest is not None and newest.pending_writes is not None
    assert [w[1] for w in newest.pending_writes] == [INTERRUPT]

    # A new saver (as another process would build) resumes it.
    resumed = review_graph(RedisSaver(client)).invoke(Command(resume="yes"), config(job_id))
    assert resumed == {
        "log": ["plan:deploy", "review", "act:yes", "report"],
        "request": "deploy",
        "decision": "yes",
    }
    assert graph.get_state(config(job_id)).next == ()
    assert redis_client.zcard(index) == 5  # keep_last: 6 checkpoints made, the oldest dropped


def history(saver: BaseCheckpointSaver[Any], thread_id: str) -> list[dict[str, Any]]:
    """What a thread's checkpoints hold, without ids, timestamps and versions."""
    out = []
    for tup in saver.list(config(thread_id)):
        metadata = {k: v for k, v in tup.metadata.items() if k not in ("run_id", "parents")}
        out.append(
            {
                "values": tup.checkpoint["channel_values"],
                "channels": sorted(tup.checkpoint["channel_versions"]),
                "seen": sorted(tup.checkpoint["versions_seen"]),
                "metadata": metadata,
                # Interrupt ids hash the task id, which depends on the checkpoint id.
                "writes": [
                    (ch, "<interrupt>" if ch == INTERRUPT else v)
                    for _, ch, v in tup.pending_writes or []
                ],
                "has_parent": tup.parent_config is not None,
            }
        )
    return out


def test_same_history_as_in_memory_saver(client: redis.Redis) -> None:
    reference, ours = InMemorySaver(), RedisSaver(client, keep_last=None)
    for saver in (reference, ours):
        graph = review_graph(saver)
        graph.invoke({"log": [], "request": "x", "decision": ""}, config("t"))
        graph.invoke(Command(resume="no"), config("t"))
        chain_graph(saver, 4).invoke({"n": 0, "static": "s", "trail": []}, config("c"))
        nested_graph(saver).invoke({"n": 0, "static": "s", "trail": []}, config("n"))
    for thread_id in ("t", "c", "n"):
        assert history(ours, thread_id) == history(reference, thread_id)
        assert len(history(ours, thread_id)) > 3


def test_put_writes_like_in_memory_saver(client: redis.Redis) -> None:
    """Ordinary writes are insert-if-absent; error/interrupt writes overwrite."""
    results = []
    for saver in (InMemorySaver(), RedisSaver(client)):
        stored = saver.put(
            {"configurable": {"thread_id": "w", "checkpoint_ns": ""}}, empty_checkpoint(), {}, {}
        )
        saver.put_writes(stored, [("a", 1), ("b", 2)], "task-1")
        saver.put_writes(stored, [("a", 10), ("b", 20), ("c", 30)], "task-1")
        saver.put_writes(stored, [(ERROR, "first"), (INTERRUPT, "i1")], "task-2", "~b")
        saver.put_writes(stored, [(ERROR, "second"), (INTERRUPT, "i2")], "task-2", "~b")
        saver.put_writes(stored, [("z", "early")], "task-0", "a")
        tup = saver.get_tuple(stored)
        assert tup is not None
        results.append(tup.pending_writes)
    assert results[0] == results[1]
    assert results[1] == [
        ("task-1", "a", 1),
        ("task-1", "b", 2),
        ("task-1", "c", 30),
        ("task-0", "z", "early"),
        ("task-2", INTERRUPT, "i2"),
        ("task-2", ERROR, "second"),
    ]


def test_unchanged_channels_are_not_rewritten(
    client: redis.Redis, redis_client: redis.Redis
) -> None:
    chain_graph(RedisSaver(client, keep_last=None), 6).invoke(
        {"n": 0, "static": "fixed", "trail": []}, config("blobs")
    )
    fields = [f.split("\0") for f in redis_client.hkeys(thread_keys("blobs")[3])]
    by_channel: dict[str, int] = {}
    for _ns, _version, channel in fields:
        by_channel[channel] = by_channel.get(channel, 0) + 1
    assert by_channel["static"] == 1  # written with the input, never again
    assert by_channel["n"] == 7  # input + one per step


# --- trimming ------------------------------------------------------------------------------


@pytest.mark.parametrize("keep_last", [1, 3])
def test_keeps_only_the_last_checkpoints(
    client: redis.Redis, redis_client: redis.Redis, keep_last: int
) -> None:
    saver = RedisSaver(client, keep_last=keep_last)
    graph = chain_graph(saver, 8)
    assert graph.invoke({"n": 0, "static": "s", "trail": []}, config("p"))["n"] == 8
    assert graph.get_state(config("p")).values["trail"] == list(range(8))

    index, data, refs, blobs, writes_index, writes = thread_keys("p")
    kept = [t.checkpoint["id"] for t in saver.list(config("p"))]
    assert len(kept) == keep_last
    assert sorted(m.split("\0")[1] for m in redis_client.zrange(index, 0, -1)) == sorted(kept)
    assert redis_client.hlen(data) == redis_client.hlen(refs) == keep_last
    # Only blobs a kept checkpoint references remain, and every one it references exists.
    raw = redis.Redis.from_url(redis_url(DB))
    referenced = {field for packed in raw.hvals(refs) for field in ormsgpack.unpackb(packed)}
    raw.close()
    assert set(redis_client.hkeys(blobs)) == referenced
    # Only writes of kept checkpoints remain.
    assert {m.split("\0")[1] for m in redis_client.zrange(writes_index, 0, -1)} <= set(kept)
    assert redis_client.zcard(writes_index) == redis_client.hlen(writes)


def test_keep_last_none_keeps_everything(client: redis.Redis) -> None:
    saver = RedisSaver(client, keep_last=None)
    chain_graph(saver, 8).invoke({"n": 0, "static": "s", "trail": []}, config("all"))
    assert len(list(saver.list(config("all")))) == 10  # input + 8 steps + final
    with pytest.raises(ConfigurationError):
        RedisSaver(client, keep_last=0)


# --- expiry --------------------------------------------------------------------------------


def test_expire_thread_sets_a_ttl_on_every_key(
    client: redis.Redis, redis_client: redis.Redis
) -> None:
    saver = RedisSaver(client)
    for thread_id in ("job-a", "job-b"):
        nested_graph(saver).invoke({"n": 0, "static": "s", "trail": []}, config(thread_id))
    namespaces = {t.config["configurable"]["checkpoint_ns"] for t in saver.list(config("job-a"))}
    assert len(namespaces) == 2  # root graph and the subgraph

    assert saver.expire_thread("job-a", 120) == 6
    keys = saver_keys(redis_client, "job-a")
    assert keys == set(thread_keys("job-a"))
    for key in keys:
        assert 0 < redis_client.ttl(key) <= 120
    for key in saver_keys(redis_client, "job-b"):
        assert redis_client.ttl(key) == -1  # other threads untouched
    every_key = {str(k) for k in redis_client.scan_iter(count=1000)}
    assert every_key == keys | saver_keys(redis_client, "job-b")

    saver.delete_thread("job-a")
    assert saver_keys(redis_client, "job-a") == set()
    assert saver.get_tuple(config("job-a")) is None
    with pytest.raises(CheckpointError):
        saver.expire_thread("job-b", 0)


# --- async API -----------------------------------------------------------------------------


def test_async_api_round_trip(redis_client: redis.Redis) -> None:
    async def scenario() -> None:
        client = redis.Redis.from_url(redis_url(DB))
        aclient = redis.asyncio.Redis.from_url(redis_url(DB))
        try:
            saver = RedisSaver(client, aclient, keep_last=3)
            graph = review_graph(saver)
            cfg = config("async-job")
            first = await graph.ainvoke({"log": [], "request": "r", "decision": ""}, cfg)
            assert "__interrupt__" in first
            done = await graph.ainvoke(Command(resume="ok"), cfg)
            assert done["log"] == ["plan:r", "review", "act:ok", "report"]

            listed = [t async for t in saver.alist(cfg)]
            assert len(listed) == 3
            assert [t.checkpoint["id"] for t in listed] == [
                t.checkpoint["id"] for t in saver.list(cfg)
            ]
            newest = await saver.aget_tuple(cfg)
            assert newest is not None and newest.config == listed[0].config
            assert newest.checkpoint["channel_values"]["decision"] == "ok"

            stored = await saver.aput(
                {"configurable": {"thread_id": "raw", "checkpoint_ns": "sub"}},
                {**empty_checkpoint(), "channel_values": {"v": [1, 2]}, "channel_versions": {}},
                {"source": "update", "step": 7},
                {"v": saver.get_next_version(None, None)},
            )
            await saver.aput_writes(stored, [("v", {"x": 1})], "t1")
            got = await saver.aget_tuple(stored)
            assert isinstance(got, CheckpointTuple)
            assert got.metadata["step"] == 7
            assert got.pending_writes == [("t1", "v", {"x": 1})]
            assert [t.config async for t in saver.alist(None, filter={"step": 7})] == [
                {"configurable": {"thread_id": "raw", "checkpoint_ns": "sub", **_id(stored)}}
            ]

            assert await saver.aexpire_thread("async-job", 60) == 6
            assert all(0 < redis_client.ttl(k) <= 60 for k in thread_keys("async-job"))
            await saver.adelete_thread("async-job")
            assert await saver.aget_tuple(cfg) is None
        finally:
            await aclient.aclose()
            client.close()

    asyncio.run(scenario())


def _id(config: RunnableConfig) -> dict[str, Any]:
    return {"checkpoint_id": config["configurable"]["checkpoint_id"]}


def test_async_api_needs_an_async_client(client: redis.Redis) -> None:
    saver = RedisSaver(client)
    with pytest.raises(ConfigurationError, match="async client"):
        asyncio.run(saver.aget_tuple(config("x")))
    assert issubclass(CheckpointError, StateError)


def test_nul_bytes_are_refused(client: redis.Redis) -> None:
    saver = RedisSaver(client)
    with pytest.raises(CheckpointError, match="NUL"):
        saver.put(
            {"configurable": {"thread_id": "t", "checkpoint_ns": "a\0b"}},
            empty_checkpoint(),
            {},
            {},
        )


# --- strict deserialization ----------------------------------------------------------------


@dataclasses.dataclass
class Ticket:
    """A state value of an application type: loads only if declared."""

    number: int
    title: str


@dataclasses.dataclass
class Undeclared:
    secret: str


class TicketState(TypedDict):
    ticket: Ticket


def test_declared_types_round_trip_undeclared_fail_on_write(client: redis.Redis) -> None:
    def build(saver: RedisSaver) -> CompiledStateGraph[Any, Any, Any, Any]:
        builder = StateGraph(TicketState)
        builder.add_node("bump", lambda s: {"ticket": Ticket(s["ticket"].number + 1, "t")})
        builder.add_edge(START, "bump")
        return builder.compile(checkpointer=saver)

    allowed = RedisSaver(client, allowed_types=[Ticket])
    assert build(allowed).invoke({"ticket": Ticket(1, "t")}, config("tk")) == {
        "ticket": Ticket(2, "t")
    }
    tup = allowed.get_tuple(config("tk"))
    assert tup is not None and tup.checkpoint["channel_values"]["ticket"] == Ticket(2, "t")

    with pytest.raises(DisallowedTypeError, match="Ticket"):
        build(RedisSaver(client)).invoke({"ticket": Ticket(1, "t")}, config("tk2"))
    with pytest.raises(DisallowedTypeError, match="Undeclared"):
        strict_serializer([Ticket]).dumps_typed({"x": [Undeclared("s")]})


def test_with_allowlist_keeps_the_serializer_strict(client: redis.Redis) -> None:
    """What LangGraph does with the state schema's types under LANGGRAPH_STRICT_MSGPACK=true."""
    saver = RedisSaver(client)
    widened = saver.with_allowlist([(Ticket.__module__, "Ticket")])
    assert isinstance(widened, RedisSaver) and widened.client is client
    assert isinstance(widened.serde, StrictSerializer)
    assert widened.serde.loads_typed(widened.serde.dumps_typed(Ticket(1, "a"))) == Ticket(1, "a")
    with pytest.raises(DisallowedTypeError):
        saver.serde.dumps_typed(Ticket(1, "a"))
    with pytest.raises(DisallowedTypeError):
        widened.serde.dumps_typed(Undeclared("s"))


SENTINEL_SOURCE = """
import pathlib
pathlib.Path({imported!r}).write_text("imported")

class Boom:
    def __init__(self, *args, **kwargs):
        pathlib.Path({called!r}).write_text("called")

    @classmethod
    def run(cls, arg):
        pathlib.Path({called!r}).write_text("called")
"""


@dataclasses.dataclass
class Sentinel:
    module: str
    imported: Path
    called: Path
    shell: Path

    def untouched(self) -> bool:
        return (
            self.module not in sys.modules
            and not self.imported.exists()
            and not self.called.exists()
            and not self.shell.exists()
        )


@pytest.fixture
def sentinel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sentinel]:
    """An importable module that leaves a file behind if imported or if Boom is called."""
    module = f"ckpt_sentinel_{uuid.uuid4().hex}"
    found = Sentinel(module, tmp_path / "imported", tmp_path / "called", tmp_path / "shell")
    source = SENTINEL_SOURCE.format(imported=str(found.imported), called=str(found.called))
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield found
    sys.modules.pop(module, None)


def _ext(code: int, *fields: Any) -> bytes:
    return ormsgpack.packb({"state": ormsgpack.Ext(code, ormsgpack.packb(list(fields)))})


def crafted_payloads(s: Sentinel) -> dict[str, tuple[str, bytes]]:
    """Typed payloads an attacker with write access to Redis could plant."""
    touch = f"touch {s.shell}"
    evil_in_set = ormsgpack.Ext(
        EXT_CONSTRUCTOR_SINGLE_ARG, ormsgpack.packb([s.module, "Boom", "x"])
    )
    return {
        "constructor": ("msgpack", _ext(EXT_CONSTRUCTOR_SINGLE_ARG, s.module, "Boom", "x")),
        "positional": ("msgpack", _ext(EXT_CONSTRUCTOR_POS_ARGS, "os", "system", [touch])),
        "keywords": ("msgpack", _ext(EXT_CONSTRUCTOR_KW_ARGS, s.module, "Boom", {})),
        "method": ("msgpack", _ext(EXT_METHOD_SINGLE_ARG, "os", "system", touch, "__call__")),
        "method-of-module": ("msgpack", _ext(EXT_METHOD_SINGLE_ARG, s.module, "Boom", 1, "run")),
        "pydantic": ("msgpack", _ext(EXT_PYDANTIC_V2, s.module, "Boom", {}, "model_validate")),
        "nested-in-allowed-set": (
            "msgpack",
            _ext(EXT_CONSTRUCTOR_SINGLE_ARG, "builtins", "set", [evil_in_set]),
        ),
        "numpy": ("msgpack", _ext(EXT_NUMPY_ARRAY, "|O", [1], "C", b"\0" * 8)),
        "pickle": ("pickle", f"c{s.module}\nBoom\n(tR.".encode()),
        "json": (
            "json",
            json.dumps({"lc": 2, "type": "constructor", "id": [s.module, "Boom"]}).encode(),
        ),
    }


def test_control_the_sentinel_fires_with_a_permissive_serializer(sentinel: Sentinel) -> None:
    """Without the allowlist, the crafted constructor does import and call (the threat)."""
    permissive = JsonPlusSerializer(allowed_msgpack_modules=True)
    permissive.loads_typed(crafted_payloads(sentinel)["constructor"])
    assert sentinel.module in sys.modules
    assert sentinel.imported.exists() and sentinel.called.exists()


def test_strict_serializer_refuses_crafted_payloads(sentinel: Sentinel) -> None:
    serde = StrictSerializer()
    for name, payload in crafted_payloads(sentinel).items():
        with pytest.raises(DisallowedTypeError):
            serde.loads_typed(payload)
        assert sentinel.untouched(), name
    # Allowing one harmless type does not open the others.
    with pytest.raises(DisallowedTypeError):
        strict_serializer([Ticket]).loads_typed(crafted_payloads(sentinel)["constructor"])
    assert sentinel.untouched()


@pytest.mark.parametrize("where", ["blob", "write", "metadata"])
def test_crafted_checkpoint_data_in_redis_is_refused(
    client: redis.Redis, sentinel: Sentinel, where: str
) -> None:
    """Data planted in Redis by hand: loading it raises, imports nothing, calls nothing."""
    saver = RedisSaver(client)
    chain_graph(saver, 2).invoke({"n": 0, "static": "s", "trail": []}, config("victim"))
    _index, data, _refs, blobs, writes_index, writes = thread_keys("victim")
    newest = saver.get_tuple(config("victim"))
    assert newest is not None
    member = "\0" + newest.checkpoint["id"]
    raw = redis.Redis.from_url(redis_url(DB))  # bytes in, bytes out
    try:
        blob_field = f"\0{newest.checkpoint['channel_versions']['n']}\0n"
        write_field = f"{member}\0task\x000"
        original = {"blob": raw.hget(blobs, blob_field), "metadata": raw.hget(data, member)}
        for name, (type_, payload) in crafted_payloads(sentinel).items():
            if where == "blob":
                raw.hset(blobs, blob_field, ormsgpack.packb([type_, payload]))
            elif where == "write":
                raw.hset(writes, write_field, ormsgpack.packb(["n", type_, payload, ""]))
                raw.zadd(writes_index, {write_field: 0})
            else:
                record = ormsgpack.unpackb(original["metadata"])
                record[2:4] = [type_, payload]
                raw.hset(data, member, ormsgpack.packb(record))
            with pytest.raises(DisallowedTypeError):
                saver.get_tuple(config("victim"))
            with pytest.raises(DisallowedTypeError):
                list(saver.list(config("victim")))
            with pytest.raises(DisallowedTypeError):
                chain_graph(saver, 2).invoke(None, config("victim"))
            assert sentinel.untouched(), name
            # Put the genuine data back, so each payload is tested on its own.
            raw.hset(blobs, blob_field, original["blob"])
            raw.hset(data, member, original["metadata"])
            raw.hdel(writes, write_field)
            raw.zrem(writes_index, write_field)
            assert saver.get_tuple(config("victim")) is not None
    finally:
        raw.close()
