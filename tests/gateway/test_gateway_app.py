"""The whole gateway in-process on the fake job system, driven by the official client and
by raw HTTP: every method, both bindings, the task store and stream on Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

import httpx
import pytest
from a2a.types.a2a_pb2 import (
    CancelTaskRequest,
    GetTaskRequest,
    ListTasksRequest,
    SubscribeToTaskRequest,
    TaskState,
)
from a2a.utils.errors import TaskNotCancelableError, TaskNotFoundError, UnsupportedOperationError

from project.gateway.mapping import from_value
from tests.gateway.a2a_client import a2a_client, send, send_request, user_message
from tests.gateway.serving import ALICE, BOB, RunningGateway

T = TypeVar("T")
S = TaskState
BINDINGS = ["JSONRPC", "HTTP+JSON"]


def run(coro: Awaitable[T]) -> T:
    async def go() -> T:
        return await asyncio.wait_for(coro, 30)

    return asyncio.run(go())


async def wait_state(client: Any, task_id: str, state: TaskState) -> Any:
    for _ in range(300):
        task = await client.get_task(GetTaskRequest(id=task_id))
        if task.status.state == state:
            return task
        await asyncio.sleep(0.02)
    raise AssertionError(f"task {task_id} never reached {TaskState.Name(state)}")


@pytest.mark.parametrize("binding", BINDINGS)
def test_blocking_send_answers_with_the_completed_task(
    running_gateway: RunningGateway, binding: str
) -> None:
    async def go() -> None:
        async with a2a_client(
            running_gateway.url, ALICE, streaming=False, binding=binding
        ) as client:
            [response] = await send(client, user_message(text="hello", skill="echo"))
            task = response.task
            assert task.status.state == S.TASK_STATE_COMPLETED
            assert task.metadata["skill"] == "echo"
            [artifact] = task.artifacts
            assert from_value(artifact.parts[0].data) == {"result": "hello"}
            assert artifact.parts[1].text == "hello"
            assert task.history[0].parts[0].text == "hello"
        job = running_gateway.jobs.jobs[task.id]
        assert (job.owner, job.payload, job.a2a_message["parts"]) == (
            "alice",
            {"text": "hello"},
            [{"text": "hello"}],
        )

    run(go())


def test_the_default_skill_and_a_data_payload(running_gateway: RunningGateway) -> None:
    async def go() -> None:
        async with a2a_client(running_gateway.url, ALICE, streaming=False) as client:
            [response] = await send(client, user_message(data={"text": "from data", "n": 2}))
            assert response.task.status.state == S.TASK_STATE_COMPLETED
        assert running_gateway.jobs.jobs[response.task.id].task_type == "echo"

    run(go())


@pytest.mark.parametrize("binding", BINDINGS)
def test_return_immediately_then_get(running_gateway: RunningGateway, binding: str) -> None:
    async def go() -> None:
        async with a2a_client(
            running_gateway.url, ALICE, streaming=False, binding=binding
        ) as client:
            [response] = await send(
                client, user_message(text="x", skill="progress"), return_immediately=True
            )
            assert response.task.status.state == S.TASK_STATE_SUBMITTED
            task = await wait_state(client, response.task.id, S.TASK_STATE_COMPLETED)
            assert from_value(task.artifacts[0].parts[0].data) == {"steps": 3}
            assert [m.parts[0].text for m in task.history[1:]] == ["step 0", "step 1", "step 2"]

    run(go())


@pytest.mark.parametrize("binding", BINDINGS)
def test_stream_to_completion(running_gateway: RunningGateway, binding: str) -> None:
    async def go() -> None:
        async with a2a_client(running_gateway.url, ALICE, binding=binding) as client:
            responses = await send(client, user_message(text="x", skill="progress"))
        kinds = [r.WhichOneof("payload") for r in responses]
        assert kinds[0] == "task" and kinds[-1] == "status_update" and "artifact_update" in kinds
        updates = [r.status_update.status for r in responses if r.HasField("status_update")]
        assert [u.message.parts[0].text for u in updates if u.HasField("message")] == [
            "step 0",
            "step 1",
            "step 2",
        ]
        assert updates[-1].state == S.TASK_STATE_COMPLETED

    run(go())


@pytest.mark.parametrize("binding", BINDINGS)
def test_input_required_then_the_answer_then_completed(
    running_gateway: RunningGateway, binding: str
) -> None:
    async def go() -> None:
        async with a2a_client(
            running_gateway.url, ALICE, streaming=False, binding=binding
        ) as client:
            [asked] = await send(client, user_message(text="paint", skill="ask"))
            task = asked.task
            assert task.status.state == S.TASK_STATE_INPUT_REQUIRED
            assert task.status.message.parts[0].text == "which colour?"
            answer = user_message(text="red", task_id=task.id, context_id=task.context_id)
            [done] = await send(client, answer)
            assert done.task.status.state == S.TASK_STATE_COMPLETED
            assert done.task.artifacts[0].parts[1].text == "you said red"
            texts = [m.parts[0].text for m in done.task.history]
            assert texts == ["paint", "which colour?", "red"]
        assert running_gateway.jobs.jobs[task.id].messages[0]["parts"] == [{"text": "red"}]

    run(go())


def test_the_answer_can_come_through_another_replica_state(running_gateway: RunningGateway) -> None:
    """A replica that holds nothing of the task (its parked request dropped) takes the answer."""

    async def go() -> None:
        async with a2a_client(running_gateway.url, ALICE, streaming=False) as client:
            [asked] = await send(client, user_message(text="paint", skill="ask"))
            registry = running_gateway.gateway.handler._active_task_registry
            await registry.aclose()  # forget every in-memory task, as a fresh replica would
            registry._closed = False
            answer = user_message(
                text="blue", task_id=asked.task.id, context_id=asked.task.context_id
            )
            [done] = await send(client, answer)
            assert done.task.status.state == S.TASK_STATE_COMPLETED
            assert done.task.artifacts[0].parts[1].text == "you said blue"

    run(go())


def test_a_message_to_a_working_task_is_refused(running_gateway: RunningGateway) -> None:
    async def go() -> None:
        async with a2a_client(running_gateway.url, ALICE, streaming=False) as client:
            [started] = await send(
                client, user_message(text="x", skill="slow"), return_immediately=True
            )
            task = await wait_state(client, started.task.id, S.TASK_STATE_WORKING)
            with pytest.raises(UnsupportedOperationError, match="asks for input"):
                await send(
                    client, user_message(text="hi", task_id=task.id, context_id=task.context_id)
                )
            await client.cancel_task(CancelTaskRequest(id=task.id))

    run(go())


@pytest.mark.parametrize("binding", BINDINGS)
def test_cancel(running_gateway: RunningGateway, binding: str) -> None:
    async def go() -> None:
        async with a2a_client(
            running_gateway.url, ALICE, streaming=False, binding=binding
        ) as client:
            [started] = await send(
                client, user_message(text="x", skill="slow"), return_immediately=True
            )
            await wait_state(client, started.task.id, S.TASK_STATE_WORKING)
            canceled = await client.cancel_task(CancelTaskRequest(id=started.task.id))
            assert canceled.status.state == S.TASK_STATE_CANCELED
            assert (
                await client.get_task(GetTaskRequest(id=started.task.id))
            ).status.state == S.TASK_STATE_CANCELED
            with pytest.raises(TaskNotCancelableError):
                await client.cancel_task(CancelTaskRequest(id=started.task.id))
        assert running_gateway.jobs.jobs[started.task.id].status == "CANCELED"

    run(go())


def test_cancel_a_task_waiting_for_input(running_gateway: RunningGateway) -> None:
    async def go() -> None:
        async with a2a_client(running_gateway.url, ALICE, streaming=False) as client:
            [asked] = await send(client, user_message(text="x", skill="ask"))
            canceled = await client.cancel_task(CancelTaskRequest(id=asked.task.id))
            assert canceled.status.state == S.TASK_STATE_CANCELED

    run(go())


def test_list_shows_the_callers_own_tasks_newest_first(running_gateway: RunningGateway) -> None:
    async def go() -> None:
        async with (
            a2a_client(running_gateway.url, ALICE, streaming=False) as alice,
            a2a_client(running_gateway.url, BOB, streaming=False) as bob,
        ):
            ids = [
                (await send(alice, user_message(text=str(i), skill="echo")))[0].task.id
                for i in range(3)
            ]
            [bobs] = await send(bob, user_message(text="b", skill="echo"))
            listed = await alice.list_tasks(ListTasksRequest())
            assert [t.id for t in listed.tasks] == ids[::-1]
            assert listed.total_size == 3
            page = await alice.list_tasks(ListTasksRequest(page_size=2))
            assert [t.id for t in page.tasks] == ids[:0:-1] and page.next_page_token
            rest = await alice.list_tasks(
                ListTasksRequest(page_size=2, page_token=page.next_page_token)
            )
            assert [t.id for t in rest.tasks] == ids[:1]
            done = await alice.list_tasks(ListTasksRequest(status=S.TASK_STATE_WORKING))
            assert not done.tasks
            # Another caller's task does not exist for alice.
            with pytest.raises(TaskNotFoundError):
                await alice.get_task(GetTaskRequest(id=bobs.task.id))
            with pytest.raises(TaskNotFoundError):
                await alice.cancel_task(CancelTaskRequest(id=bobs.task.id))
            with pytest.raises(TaskNotFoundError):
                await send(alice, user_message(text="x", task_id=bobs.task.id))

    run(go())


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (user_message(text="x", skill="nope"), "unknown skill 'nope'"),
        (user_message(data=[1, 2], skill="echo"), "JSON object"),
    ],
)
def test_unknown_skills_and_refused_payloads_are_rejected(
    running_gateway: RunningGateway, message: Any, reason: str
) -> None:
    async def go() -> None:
        async with a2a_client(running_gateway.url, ALICE, streaming=False) as client:
            [response] = await send(client, message)
            assert response.task.status.state == S.TASK_STATE_REJECTED
            assert reason in response.task.status.message.parts[0].text

    run(go())


@pytest.mark.parametrize(
    ("skill", "state", "text"),
    [
        ("reject", S.TASK_STATE_REJECTED, "JobRejectedError: not today"),
        ("fail", S.TASK_STATE_FAILED, "HandlerError: boom"),
        ("refused", S.TASK_STATE_REJECTED, "InvalidJobError: payload too big"),
        ("malformed", S.TASK_STATE_FAILED, "malformed"),
    ],
)
def test_failures_and_rejections_say_why(
    running_gateway: RunningGateway, skill: str, state: TaskState, text: str
) -> None:
    async def go() -> None:
        async with a2a_client(running_gateway.url, ALICE, streaming=False) as client:
            [response] = await send(client, user_message(text="x", skill=skill))
            assert response.task.status.state == state
            assert text in response.task.status.message.parts[0].text

    run(go())


def test_a_handler_can_answer_with_a_message_or_shaped_artifacts(
    running_gateway: RunningGateway,
) -> None:
    async def go() -> None:
        async with a2a_client(running_gateway.url, ALICE, streaming=False) as client:
            [reply] = await send(client, user_message(text="x", skill="reply"))
            assert reply.WhichOneof("payload") == "message"
            assert reply.message.parts[0].text == "a direct reply"
            [shaped] = await send(client, user_message(text="x", skill="shaped"))
            task = shaped.task
            assert task.artifacts[0].name == "doc"
            assert task.artifacts[1].parts[0].url == "https://example.com/x.txt"
            assert task.artifacts[2].parts[0].raw == b"tck"
            assert task.status.message.parts[0].text == "done"
        async with a2a_client(running_gateway.url, ALICE) as client:
            responses = await send(client, user_message(text="x", skill="reply"))
            assert responses[-1].status_update.status.message.parts[0].text == "a direct reply"

    run(go())


def test_a_dropped_stream_is_taken_up_by_subscribe_without_a_gap(
    running_gateway: RunningGateway,
) -> None:
    async def go() -> None:
        async with a2a_client(running_gateway.url, ALICE) as client:
            held = user_message(text="x", data={"hold": True}, skill="progress")
            stream = client.send_message(send_request(held))
            first = await anext(stream)
            await stream.aclose()  # the client drops the stream after the first event
            task_id = first.task.id
            seen = []
            async for r in client.subscribe(SubscribeToTaskRequest(id=task_id)):
                if not seen:  # subscribed: now the job may finish
                    running_gateway.jobs.release(task_id)
                seen.append(r)
        snapshot = seen[0].task
        later = [r.status_update.status for r in seen[1:] if r.HasField("status_update")]
        # The snapshot's latest progress message is its status message, earlier ones are
        # in its history; then come the status updates after it.
        progress = [
            m.parts[0].text
            for m in [*snapshot.history, snapshot.status.message]
            if m.metadata.fields.get("kind") is not None
        ] + [
            s.message.parts[0].text
            for s in later
            if s.HasField("message") and s.state == S.TASK_STATE_WORKING
        ]
        assert progress == ["step 0", "step 1", "step 2"]
        assert later[-1].state == S.TASK_STATE_COMPLETED

    run(go())


def test_subscribe_to_a_finished_task_is_refused(running_gateway: RunningGateway) -> None:
    async def go() -> None:
        async with a2a_client(running_gateway.url, ALICE) as client:
            responses = await send(client, user_message(text="x", skill="echo"))
            with pytest.raises(UnsupportedOperationError, match="terminal"):
                _ = [
                    r
                    async for r in client.subscribe(SubscribeToTaskRequest(id=responses[0].task.id))
                ]

    run(go())


RPC_HEADERS = {"Authorization": f"Bearer {ALICE}", "A2A-Version": "1.0"}


def rpc(
    url: str, body: Any, headers: dict[str, str] | None = None, **kwargs: Any
) -> httpx.Response:
    if not isinstance(body, bytes):
        kwargs["json"] = body
    else:
        kwargs["content"] = body
    return httpx.post(url + "/", headers=headers or RPC_HEADERS, timeout=10, **kwargs)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", -32700),
        ({"jsonrpc": "2.0", "id": 1, "method": "NoSuchMethod", "params": {}}, -32601),
        (
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "GetTask",
                "params": {"id": 42, "historyLength": "x"},
            },
            -32602,
        ),
        (
            {"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": "no-such-task"}},
            -32001,
        ),
        ({"jsonrpc": "1.0", "id": 1, "method": "GetTask", "params": {"id": "x"}}, -32600),
        ([{"jsonrpc": "2.0", "id": 1, "method": "GetTask"}], -32600),
        (b"[" * 20_000, -32700),
        (b'{"a":' * 5_000 + b"1" + b"}" * 5_000, -32700),
    ],
)
def test_malformed_json_rpc_gets_the_spec_error(
    running_gateway: RunningGateway, body: Any, code: int
) -> None:
    response = rpc(running_gateway.url, body)
    assert response.status_code == 200
    error = response.json()["error"]
    assert error["code"] == code
    assert "Traceback" not in response.text


def test_a_missing_version_header_is_refused(running_gateway: RunningGateway) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": "x"}}
    response = rpc(running_gateway.url, body, headers={"Authorization": f"Bearer {ALICE}"})
    assert response.json()["error"]["code"] == -32009  # VersionNotSupportedError


def test_rest_errors_are_http_statuses(running_gateway: RunningGateway) -> None:
    headers = {"Authorization": f"Bearer {ALICE}", "A2A-Version": "1.0"}
    missing = httpx.get(running_gateway.url + "/rest/tasks/no-such-task", headers=headers)
    assert missing.status_code == 404
    bad = httpx.post(running_gateway.url + "/rest/message:send", headers=headers, content=b"{oops")
    assert bad.status_code == 400
    assert httpx.get(running_gateway.url + "/rest/tasks/x").status_code == 401


def test_oversized_bodies_and_no_token_are_refused_and_serving_goes_on(
    running_gateway: RunningGateway,
) -> None:
    big = {"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {"pad": "x" * 70_000}}
    assert rpc(running_gateway.url, big).status_code == 413
    assert (
        rpc(running_gateway.url, {"jsonrpc": "2.0"}, headers={"A2A-Version": "1.0"}).status_code
        == 401
    )
    for _ in range(50):
        rpc(running_gateway.url, b"\x00\xff garbage")
    card = httpx.get(running_gateway.url + "/.well-known/agent-card.json")
    assert card.status_code == 200
    assert {s["id"] for s in card.json()["skills"]} >= {"echo", "ask"}
    assert httpx.get(running_gateway.url + "/healthz").json() == {"status": "ok"}


def test_json_rpc_takes_json_only_and_rest_answers_are_application_json(
    running_gateway: RunningGateway,
) -> None:
    body = b'{"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": "x"}}'
    headers = {**RPC_HEADERS, "Content-Type": "text/plain"}
    refused = httpx.post(running_gateway.url + "/", content=body, headers=headers)
    assert (refused.status_code, refused.json()["error"]["code"]) == (415, -32005)
    headers["Content-Type"] = "application/json; charset=utf-8"
    assert (
        httpx.post(running_gateway.url + "/", content=body, headers=headers).json()["error"]["code"]
        == -32001
    )
    rest = httpx.get(running_gateway.url + "/rest/tasks", headers=RPC_HEADERS)
    assert rest.status_code == 200
    assert rest.headers["content-type"] == "application/json"
