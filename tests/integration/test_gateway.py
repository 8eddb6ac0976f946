"""The A2A gateway as real processes (two replicas) in front of real tiers, driven by the
official ``a2a-sdk`` client and by raw HTTP (test skills in tests/integration/tck)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import redis
from a2a.types.a2a_pb2 import (
    CancelTaskRequest,
    GetTaskRequest,
    ListTasksRequest,
    SubscribeToTaskRequest,
    TaskState,
)
from a2a.utils.errors import TaskNotFoundError, UnsupportedOperationError
from conftest import redis_url
from support.deployments import deployment_on

from project.core.state.connections import connect_redis
from project.core.state.jobs import JobStore
from project.gateway.mapping import from_value
from project.local.deployment import LocalDeployment
from tests.gateway.a2a_client import a2a_client, send, send_request, user_message
from tests.integration.tck.processes import GatewayProcess

pytestmark = pytest.mark.integration

DB = 12
TCK_DIR = Path(__file__).parent / "tck"
ALICE = "alice-token-0123456789abcdef"
BOB = "bob-token-0123456789abcdef"
TOKENS = f"alice:{ALICE},bob:{BOB}"
S = TaskState
T = TypeVar("T")


class Gateways:
    """Two replicas of the gateway on one deployment."""

    def __init__(
        self, deployment: LocalDeployment, one: GatewayProcess, two: GatewayProcess
    ) -> None:
        self.deployment = deployment
        self.one = one
        self.two = two


def gateway_env() -> dict[str, str]:
    return {
        "AGENTS_REDIS_URL": redis_url(DB),
        "AGENTS_GATEWAY_TOKENS": TOKENS,
        "AGENTS_GATEWAY_DEFAULT_SKILL": "tck",
        "AGENTS_GATEWAY_MAX_BODY_BYTES": "65536",
        "AGENTS_LOG_LEVEL": "WARNING",
    }


@pytest.fixture(scope="module")
def gateways(redis_server: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateways]:
    logs = tmp_path_factory.mktemp("gateway")
    with deployment_on(
        DB, logs, AGENTS_HANDLER_MODULES="gateway_skills", PYTHONPATH=str(TCK_DIR)
    ) as deployment:
        one = GatewayProcess(logs, "gateway-1", **gateway_env()).start()
        two = GatewayProcess(logs, "gateway-2", **gateway_env()).start()
        try:
            yield Gateways(deployment, one, two)
        finally:
            one.stop()
            two.stop()


def run(coro: Awaitable[T], timeout_s: float = 60) -> T:
    async def go() -> T:
        return await asyncio.wait_for(coro, timeout_s)

    return asyncio.run(go())


async def wait_state(client: Any, task_id: str, states: set[int], timeout_s: float = 30) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        task = await client.get_task(GetTaskRequest(id=task_id))
        if task.status.state in states:
            return task
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"task {task_id} stuck in {TaskState.Name(task.status.state)}")
        await asyncio.sleep(0.05)


def kind_of(message: Any) -> str | None:
    value = message.metadata.fields.get("kind")
    return None if value is None else str(value.string_value)


def custom(message: Any) -> bool:
    """A progress message an agent wrote (``get_stream_writer()``)."""
    return kind_of(message) == "custom"


def test_the_card_shows_the_skills_live_workers_offer(gateways: Gateways) -> None:
    card = httpx.get(gateways.one.url + "/.well-known/agent-card.json", timeout=10).json()
    skills = {s["id"]: s for s in card["skills"]}
    assert {"compute", "generic", "data_processing", "tck", "gw_ask"} <= set(skills)
    assert skills["gw_ask"]["description"] == "Asks which colour"
    assert [i["protocolBinding"] for i in card["supportedInterfaces"]] == ["JSONRPC", "HTTP+JSON"]
    assert card["capabilities"]["streaming"] is True
    assert "bearer" in card["securitySchemes"]


@pytest.mark.parametrize("binding", ["JSONRPC", "HTTP+JSON"])
def test_blocking_send(gateways: Gateways, binding: str) -> None:
    async def go() -> None:
        async with a2a_client(gateways.one.url, ALICE, streaming=False, binding=binding) as client:
            message = user_message(data={"operation": "sum", "values": [1, 2, 3]}, skill="compute")
            [response] = await send(client, message)
            task = response.task
            assert task.status.state == S.TASK_STATE_COMPLETED
            assert from_value(task.artifacts[0].parts[0].data) == {"operation": "sum", "result": 6}

    run(go())


def test_the_gateway_signs_what_it_sends_and_tokens_never_reach_the_tiers(
    gateways: Gateways,
) -> None:
    async def go() -> str:
        async with a2a_client(gateways.one.url, ALICE, streaming=False) as client:
            message = user_message(data={"operation": "max", "values": [4, 9]}, skill="compute")
            [response] = await send(client, message)
            assert response.task.status.state == S.TASK_STATE_COMPLETED
            return str(response.task.id)

    task_id = run(go())
    redis = connect_redis(redis_url(DB))
    store = JobStore(redis, result_ttl_s=60)
    record = store.get(task_id)
    assert record is not None and record.owner == "alice"
    # The coordinator's REQUEST continues the chain the gateway's signed submit began.
    first = store.chain(task_id)[0]
    assert first["sender"].startswith("coordinator") and first["parent_request_id"] is not None
    # No token, nor any token's hash, anywhere the tiers can read.
    secrets = [ALICE, BOB, hashlib.sha256(ALICE.encode()).hexdigest()]
    raw = redis_bytes(DB)
    for key in raw.scan_iter(count=1000):
        kind = raw.type(key)
        if kind == b"string":
            values = [raw.get(key) or b""]
        elif kind == b"hash":
            values = [*raw.hgetall(key).values()]
        elif kind == b"stream":
            values = [v for _, fields in raw.xrange(key) for v in fields.values()]
        elif kind == b"list":
            values = raw.lrange(key, 0, -1)
        else:
            values = (
                [m for m, _ in raw.zrange(key, 0, -1, withscores=True)] if kind == b"zset" else []
            )
        for value in values:
            assert not any(s.encode() in value for s in secrets), key


def redis_bytes(db: int) -> Any:
    """A client on database ``db`` that returns bytes (checkpoints are binary)."""
    return redis.Redis.from_url(redis_url(db))


def test_a_handler_sees_the_a2a_message(gateways: Gateways) -> None:
    async def go() -> None:
        async with a2a_client(gateways.one.url, ALICE, streaming=False) as client:
            message = user_message(text="who am I", skill="gw_whoami", message_id="m-whoami-1")
            [response] = await send(client, message)
            seen = from_value(response.task.artifacts[0].parts[0].data)
            assert seen["message_id"] == "m-whoami-1"
            assert seen["context_id"] == response.task.context_id
            assert seen["task_id"] == response.task.id
            assert seen["parts"] == [{"text": "who am I"}]
            assert (seen["owner"], seen["text"]) == ("alice", "who am I")

    run(go())


def test_non_blocking_send_then_get(gateways: Gateways) -> None:
    async def go() -> None:
        async with a2a_client(gateways.one.url, ALICE, streaming=False) as client:
            message = user_message(data={"echo": "later", "sleep_s": 0.5}, skill="generic")
            [response] = await send(client, message, return_immediately=True)
            assert response.task.status.state in (S.TASK_STATE_SUBMITTED, S.TASK_STATE_WORKING)
            task = await wait_state(client, response.task.id, {S.TASK_STATE_COMPLETED})
            assert from_value(task.artifacts[0].parts[0].data) == {"result": "later"}
            assert task.artifacts[0].parts[1].text == "later"

    run(go())


def test_stream_to_completion(gateways: Gateways) -> None:
    async def go() -> None:
        async with a2a_client(gateways.two.url, ALICE) as client:
            responses = await send(client, user_message(data={"steps": 3}, skill="gw_progress"))
        kinds = [r.WhichOneof("payload") for r in responses]
        assert kinds[0] == "task" and "artifact_update" in kinds
        statuses = [r.status_update.status for r in responses if r.HasField("status_update")]
        progress = [s.message.parts[0].text for s in statuses if custom(s.message)]
        assert progress == ["step 0", "step 1", "step 2"]
        assert all(kind_of(s.message) == "custom" for s in statuses if s.HasField("message"))
        assert statuses[0].state == S.TASK_STATE_WORKING
        assert statuses[-1].state == S.TASK_STATE_COMPLETED

    run(go())


@pytest.mark.parametrize("binding", ["JSONRPC", "HTTP+JSON"])
def test_input_required_then_the_answer_then_completion(gateways: Gateways, binding: str) -> None:
    async def go() -> None:
        async with a2a_client(gateways.one.url, ALICE, streaming=False, binding=binding) as client:
            [asked] = await send(client, user_message(text="the door", skill="gw_ask"))
            task = asked.task
            assert task.status.state == S.TASK_STATE_INPUT_REQUIRED
            assert task.status.message.parts[0].text == "which colour for the door?"
        # The answer goes to the other replica.
        async with a2a_client(gateways.two.url, ALICE, streaming=False, binding=binding) as client:
            answer = user_message(text="red", task_id=task.id, context_id=task.context_id)
            [done] = await send(client, answer)
            assert done.task.status.state == S.TASK_STATE_COMPLETED
            assert done.task.artifacts[0].parts[1].text == "the door in red"
            assert [m.parts[0].text for m in done.task.history] == [
                "the door",
                "which colour for the door?",
                "red",
            ]

    run(go())


def test_cancel(gateways: Gateways) -> None:
    async def go() -> None:
        async with a2a_client(gateways.one.url, ALICE, streaming=False) as client:
            message = user_message(data={"echo": "x", "sleep_s": 30}, skill="generic")
            [response] = await send(client, message, return_immediately=True)
            await wait_state(client, response.task.id, {S.TASK_STATE_WORKING})
        async with a2a_client(gateways.two.url, ALICE, streaming=False) as client:
            canceled = await client.cancel_task(CancelTaskRequest(id=response.task.id))
            assert canceled.status.state == S.TASK_STATE_CANCELED
        async with a2a_client(gateways.one.url, ALICE, streaming=False) as client:
            task = await wait_state(client, response.task.id, {S.TASK_STATE_CANCELED}, timeout_s=10)
            assert not task.artifacts

    run(go())


def test_list_shows_only_the_callers_tasks(gateways: Gateways) -> None:
    async def go() -> None:
        async with (
            a2a_client(gateways.one.url, BOB, streaming=False) as bob,
            a2a_client(gateways.two.url, ALICE) as alice,
        ):
            mine = [
                (await send(bob, user_message(data={"echo": i}, skill="generic")))[0].task.id
                for i in range(3)
            ]
            listed = await bob.list_tasks(ListTasksRequest(page_size=10))
            assert [t.id for t in listed.tasks][:3] == mine[::-1]
            assert all(t.status.state == S.TASK_STATE_COMPLETED for t in listed.tasks)
            alices = await alice.list_tasks(ListTasksRequest(page_size=100))
            assert not {t.id for t in alices.tasks} & set(mine)
            # Another caller's task is not there for alice, whatever she tries.
            with pytest.raises(TaskNotFoundError):
                await alice.get_task(GetTaskRequest(id=mine[0]))
            with pytest.raises(TaskNotFoundError):
                await alice.cancel_task(CancelTaskRequest(id=mine[0]))
            with pytest.raises(TaskNotFoundError):
                _ = [r async for r in alice.subscribe(SubscribeToTaskRequest(id=mine[0]))]

    run(go())


def test_a_dropped_stream_is_taken_up_on_the_other_replica_without_losing_events(
    gateways: Gateways, tmp_path: Path
) -> None:
    go_ahead = tmp_path / "go-ahead"  # the job ends only after the subscription began

    async def go() -> None:
        async with a2a_client(gateways.one.url, ALICE) as client:
            data = {"steps": 5, "sleep_s": 0.3, "hold_file": str(go_ahead)}
            stream = client.send_message(send_request(user_message(data=data, skill="gw_progress")))
            first = await anext(stream)
            await stream.aclose()  # dropped after the first event
        async with a2a_client(gateways.two.url, ALICE) as client:
            await asyncio.sleep(0.5)  # some progress happens while nobody listens
            seen = await subscribe_then_release(client, first.task.id, go_ahead)
        snapshot = seen[0].task
        later = [r.status_update.status for r in seen[1:] if r.HasField("status_update")]
        steps = [m.parts[0].text for m in [*snapshot.history, snapshot.status.message] if custom(m)]
        steps += [s.message.parts[0].text for s in later if custom(s.message)]
        assert steps == [f"step {i}" for i in range(5)]
        assert later[-1].state == S.TASK_STATE_COMPLETED

    run(go())


def test_submit_on_one_replica_stream_on_the_other(gateways: Gateways, tmp_path: Path) -> None:
    go_ahead = tmp_path / "go-ahead"

    async def go() -> None:
        async with a2a_client(gateways.one.url, ALICE, streaming=False) as client:
            data = {"steps": 3, "hold_file": str(go_ahead)}
            message = user_message(data=data, skill="gw_progress")
            [response] = await send(client, message, return_immediately=True)
        async with a2a_client(gateways.two.url, ALICE) as client:
            seen = await subscribe_then_release(client, response.task.id, go_ahead)
        assert seen[0].HasField("task")
        assert seen[-1].status_update.status.state == S.TASK_STATE_COMPLETED

    run(go())


async def subscribe_then_release(client: Any, task_id: str, go_ahead: Path) -> list[Any]:
    """Everything a subscription to ``task_id`` streams; once its first response is in,
    ``go_ahead`` lets the (``hold_file``) job end, so it cannot end before we subscribed."""
    seen = []
    async for r in client.subscribe(SubscribeToTaskRequest(id=task_id)):
        go_ahead.touch()
        seen.append(r)
    return seen


def test_a_replica_killed_mid_task_loses_nothing(gateways: Gateways, tmp_path: Path) -> None:
    extra = GatewayProcess(tmp_path, "gateway-killed", **gateway_env()).start()

    async def go() -> None:
        async with a2a_client(extra.url, ALICE, streaming=False) as client:
            message = user_message(data={"steps": 4, "sleep_s": 0.3}, skill="gw_progress")
            [response] = await send(client, message, return_immediately=True)
        extra.kill()
        async with a2a_client(gateways.two.url, ALICE, streaming=False) as client:
            task = await wait_state(client, response.task.id, {S.TASK_STATE_COMPLETED})
            assert from_value(task.artifacts[0].parts[0].data) == {
                "steps": 4,
                "sleep_s": 0.3,
                "hold_file": "",
                "done": 4,
            }
            progress = [m.parts[0].text for m in task.history if custom(m)]
            assert progress == [f"step {i}" for i in range(4)]

    try:
        run(go())
    finally:
        extra.stop()


def test_two_answers_at_once_on_two_replicas_one_resumes_the_other_is_refused(
    gateways: Gateways,
) -> None:
    async def answer(url: str, task: Any, text: str) -> tuple[str, Any]:
        async with a2a_client(url, ALICE, streaming=False) as client:
            message = user_message(text=text, task_id=task.id, context_id=task.context_id)
            try:
                [done] = await send(client, message)
            except UnsupportedOperationError as e:
                return text, e
            return text, done.task

    async def go() -> None:
        for _ in range(3):
            async with a2a_client(gateways.one.url, ALICE, streaming=False) as client:
                [asked] = await send(client, user_message(text="the door", skill="gw_ask"))
            task = asked.task
            results = await asyncio.gather(
                answer(gateways.one.url, task, "red"), answer(gateways.two.url, task, "blue")
            )
            taken = [(text, r) for text, r in results if not isinstance(r, Exception)]
            assert len(taken) == 1, results  # the other was refused, not lost
            [(text, done)] = taken
            assert done.status.state == S.TASK_STATE_COMPLETED
            assert done.artifacts[0].parts[1].text == f"the door in {text}"
            async with a2a_client(gateways.two.url, ALICE, streaming=False) as client:
                final = await client.get_task(GetTaskRequest(id=task.id))
            assert final.status.state == S.TASK_STATE_COMPLETED
            assert [m.parts[0].text for m in final.history] == [
                "the door",
                "which colour for the door?",
                text,
            ]

    run(go())


async def _sse_until_final(http: httpx.AsyncClient, url: str, task_id: str) -> str:
    """Subscribe to ``task_id`` by raw SSE; the last task state seen when the stream ends."""
    body = {"jsonrpc": "2.0", "id": 1, "method": "SubscribeToTask", "params": {"id": task_id}}
    headers = {**HEADERS, "Accept": "text/event-stream"}
    last = ""
    async with http.stream("POST", url + "/", json=body, headers=headers) as response:
        async for line in response.aiter_lines():
            for state in ("TASK_STATE_INPUT_REQUIRED", "TASK_STATE_COMPLETED", "error"):
                if state in line:
                    last = state
    return last


def test_many_streams_on_a_task_waiting_for_input_on_both_replicas(gateways: Gateways) -> None:
    """110 subscribers on each replica (more than the Redis client's 100 connections): on
    the replica that ran the request that asked, and on the other, which takes the answer;
    every subscriber streams on to the end."""
    subscribers = 110

    async def go() -> None:
        async with a2a_client(gateways.one.url, ALICE, streaming=False) as client:
            [asked] = await send(client, user_message(text="the wall", skill="gw_ask"))
        task = asked.task
        limits = httpx.Limits(max_connections=2 * subscribers + 5)
        async with httpx.AsyncClient(timeout=60, limits=limits) as http:
            streams = [
                asyncio.create_task(_sse_until_final(http, url, task.id))
                for url in (gateways.one.url, gateways.two.url)
                for _ in range(subscribers)
            ]
            await asyncio.sleep(2)  # all of them wait on the job's log
            async with a2a_client(gateways.two.url, ALICE, streaming=False) as client:
                answer = user_message(text="blue", task_id=task.id, context_id=task.context_id)
                [done] = await send(client, answer)
            assert done.task.status.state == S.TASK_STATE_COMPLETED
            ends = await asyncio.wait_for(asyncio.gather(*streams), 30)
        assert ends == ["TASK_STATE_COMPLETED"] * (2 * subscribers)
        for gateway in (gateways.one, gateways.two):
            assert "Too many connections" not in gateway.log()

    run(go(), timeout_s=90)


def test_unknown_skills_and_refused_payloads_are_rejected(gateways: Gateways) -> None:
    async def go() -> None:
        async with a2a_client(gateways.one.url, ALICE, streaming=False) as client:
            [unknown] = await send(client, user_message(text="x", skill="no_such_skill"))
            assert unknown.task.status.state == S.TASK_STATE_REJECTED
            assert "unknown skill 'no_such_skill'" in unknown.task.status.message.parts[0].text
            bad = user_message(data={"operation": "cube", "values": [1]}, skill="compute")
            [refused] = await send(client, bad)
            assert refused.task.status.state == S.TASK_STATE_REJECTED
            assert "InvalidPayloadError" in refused.task.status.message.parts[0].text
            [rejected] = await send(client, user_message(text="x", message_id="tck-reject-task-1"))
            assert rejected.task.status.state == S.TASK_STATE_REJECTED
            assert rejected.task.status.message.parts[0].text == "JobRejectedError: rejected"

    run(go())


def test_a_direct_message_answer(gateways: Gateways) -> None:
    async def go() -> None:
        async with a2a_client(gateways.one.url, ALICE, streaming=False) as client:
            [reply] = await send(
                client, user_message(text="x", message_id="tck-message-response-1")
            )
            assert reply.message.parts[0].text == "Direct message response"

    run(go())


def test_a_message_to_a_finished_task_is_refused(gateways: Gateways) -> None:
    async def go() -> None:
        async with a2a_client(gateways.one.url, ALICE, streaming=False) as client:
            [done] = await send(client, user_message(text="x", message_id="tck-complete-task-1"))
            assert done.task.status.message.parts[0].text == "Hello from TCK"
            again = user_message(text="y", task_id=done.task.id, context_id=done.task.context_id)
            with pytest.raises(UnsupportedOperationError, match="terminal"):
                await send(client, again)

    run(go())


def test_missing_or_wrong_tokens_are_refused(gateways: Gateways) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "ListTasks", "params": {}}
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}):
        response = httpx.post(
            gateways.one.url + "/", json=body, headers={"A2A-Version": "1.0", **headers}
        )
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert (
        httpx.get(gateways.two.url + "/rest/tasks", headers={"A2A-Version": "1.0"}).status_code
        == 401
    )

    async def go() -> None:
        async with a2a_client(gateways.one.url, "not-a-token-at-all") as client:
            with pytest.raises(Exception, match="401"):
                await client.list_tasks(ListTasksRequest())

    run(go())


HEADERS = {"Authorization": f"Bearer {ALICE}", "A2A-Version": "1.0"}


def test_malformed_requests_get_the_specs_errors_and_serving_goes_on(gateways: Gateways) -> None:
    url = gateways.one.url + "/"
    cases: list[tuple[Any, dict[str, str], int]] = [
        (b"{not json", HEADERS, -32700),
        ({"jsonrpc": "2.0", "id": 1, "method": "NoSuch", "params": {}}, HEADERS, -32601),
        (
            {"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": ["x"]}},
            HEADERS,
            -32602,
        ),
        (
            {"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": "no-such"}},
            HEADERS,
            -32001,
        ),
        (
            {"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": "x"}},
            {"Authorization": HEADERS["Authorization"]},
            -32009,
        ),
    ]
    for body, headers, code in cases * 20:
        kwargs: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body}
        response = httpx.post(url, headers=headers, timeout=10, **kwargs)
        assert response.status_code == 200, response.text
        assert response.json()["error"]["code"] == code, response.text
        assert "Traceback" not in response.text
    big = {"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {"x": "y" * 70_000}}
    assert httpx.post(url, headers=HEADERS, json=big, timeout=10).status_code == 413
    rest = httpx.get(gateways.one.url + "/rest/tasks/no-such", headers=HEADERS, timeout=10)
    assert rest.status_code == 404
    # Still serving.
    test_blocking_send(gateways, "JSONRPC")
    assert "Traceback" not in gateways.one.log()


def test_the_gateway_keeps_no_task_state_of_its_own(gateways: Gateways) -> None:
    """Everything a task is lives in Redis: its record and its job's log."""
    redis = connect_redis(redis_url(DB))
    keys = {k.split(":")[0] + ":" + k.split(":")[1] for k in redis.scan_iter("gateway:*")}
    assert keys <= {"gateway:task", "gateway:tasks"}
