"""The gateway when things go wrong or happen at once: errors while a job carries on,
answers racing on two replicas, subscribers on the replica that holds a task, odd
numbers in results, refusals nobody wrote down, cancels that come too early."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

import httpx
import pytest
from a2a.auth.user import User
from a2a.server.cluster.version import TaskVersion
from a2a.server.context import ServerCallContext
from a2a.types.a2a_pb2 import (
    CancelTaskRequest,
    GetTaskRequest,
    ListTasksRequest,
    StreamResponse,
    SubscribeToTaskRequest,
    Task,
    TaskState,
    TaskStatus,
    TaskStatusUpdateEvent,
)
from a2a.utils.errors import TaskNotCancelableError, UnsupportedOperationError

from project.gateway.mapping import from_value
from tests.gateway.a2a_client import a2a_client, send, user_message
from tests.gateway.serving import ALICE, RunningGateway

T = TypeVar("T")
S = TaskState
RPC_HEADERS = {"Authorization": f"Bearer {ALICE}", "A2A-Version": "1.0"}


def run(coro: Awaitable[T]) -> T:
    async def go() -> T:
        return await asyncio.wait_for(coro, 30)

    return asyncio.run(go())


class Alice(User):
    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def user_name(self) -> str:
        return "alice"


ALICE_CONTEXT = ServerCallContext(user=Alice())


async def wait_state(client: Any, task_id: str, state: TaskState) -> Task:
    for _ in range(300):
        task: Task = await client.get_task(GetTaskRequest(id=task_id))
        if task.status.state == state:
            return task
        await asyncio.sleep(0.02)
    raise AssertionError(f"task {task_id} never reached {TaskState.Name(state)}")


async def subscribe(url: str, task_id: str) -> list[StreamResponse]:
    async with a2a_client(url, ALICE) as client:
        return [r async for r in client.subscribe(SubscribeToTaskRequest(id=task_id))]


def states(responses: list[StreamResponse]) -> list[str]:
    out = []
    for r in responses:
        kind = r.WhichOneof("payload")
        if kind == "task":
            out.append("task:" + TaskState.Name(r.task.status.state))
        elif kind == "status_update":
            out.append(TaskState.Name(r.status_update.status.state))
        else:
            out.append(str(kind))
    return out


# --- an error in the gateway while the job carries on ------------------------------


def test_an_error_following_a_job_ends_the_request_not_the_task(
    running_gateway: RunningGateway,
) -> None:
    """The gateway's first wait on the job's log fails: the request ends with the task as
    it is, not FAILED, and the task goes on from the job's log to completion."""

    async def go() -> None:
        async with a2a_client(running_gateway.url, ALICE, streaming=False) as client:
            [response] = await send(
                client, user_message(data={"hiccup": True, "sleep_s": 0.2}, skill="slow")
            )
            assert response.task.status.state not in (S.TASK_STATE_FAILED, S.TASK_STATE_COMPLETED)
            done = await wait_state(client, response.task.id, S.TASK_STATE_COMPLETED)
            assert from_value(done.artifacts[0].parts[0].data) == {"result": "slept"}

    run(go())


def test_a_failed_the_job_log_did_not_write_gives_way_to_the_log(
    running_gateway: RunningGateway,
) -> None:
    """A FAILED written without the log behind it (the SDK's, after an error) is not the
    last word while the job has a log: reads, lists and subscribers follow the log."""
    store = running_gateway.gateway.store

    async def sdk_fails(task_id: str) -> None:
        stored = await store.get(task_id, ALICE_CONTEXT)
        assert stored is not None
        failed = Task()
        failed.CopyFrom(stored.task)
        failed.status.CopyFrom(TaskStatus(state=S.TASK_STATE_FAILED))
        event = TaskStatusUpdateEvent(
            task_id=task_id, context_id=failed.context_id, status=failed.status
        )
        await store.save(
            failed, event=event, prev=None, prev_version=stored.version, context=ALICE_CONTEXT
        )

    async def go() -> None:
        async with a2a_client(running_gateway.url, ALICE, streaming=False) as client:
            [started] = await send(
                client, user_message(data={"sleep_s": 0.5}, skill="slow"), return_immediately=True
            )
            task_id = started.task.id
            await wait_state(client, task_id, S.TASK_STATE_WORKING)
            await sdk_fails(task_id)
            now = await client.get_task(GetTaskRequest(id=task_id))
            assert now.status.state == S.TASK_STATE_WORKING
            followed = await subscribe(running_gateway.url, task_id)
            assert states(followed)[-1] == "TASK_STATE_COMPLETED"
            listed = await client.list_tasks(ListTasksRequest())
            assert [t.status.state for t in listed.tasks] == [S.TASK_STATE_COMPLETED]

            # Without a job (none was ever recorded), such a FAILED stands.
            [late] = await send(
                client, user_message(text="x", skill="late"), return_immediately=True
            )
            await sdk_fails(late.task.id)
            again = await client.get_task(GetTaskRequest(id=late.task.id))
            assert again.status.state == S.TASK_STATE_FAILED

    run(go())


# --- answers -----------------------------------------------------------------------


def test_two_answers_at_once_on_two_replicas_one_resumes_the_other_is_refused(
    running_gateway: RunningGateway, second_replica: RunningGateway
) -> None:
    async def answer(url: str, task: Task, text: str) -> tuple[str, Any]:
        async with a2a_client(url, ALICE, streaming=False) as client:
            try:
                [done] = await send(
                    client, user_message(text=text, task_id=task.id, context_id=task.context_id)
                )
            except UnsupportedOperationError as e:
                return text, e
            return text, done.task

    async def go() -> None:
        for _ in range(5):
            async with a2a_client(running_gateway.url, ALICE, streaming=False) as client:
                [asked] = await send(client, user_message(text="paint", skill="ask"))
            task = asked.task
            results = await asyncio.gather(
                answer(running_gateway.url, task, "red"), answer(second_replica.url, task, "blue")
            )
            taken = [(text, r) for text, r in results if isinstance(r, Task)]
            refused = [r for _, r in results if isinstance(r, UnsupportedOperationError)]
            assert len(taken) == 1 and len(refused) == 1, results
            [(text, done)] = taken
            assert done.status.state == S.TASK_STATE_COMPLETED
            assert done.artifacts[0].parts[1].text == f"you said {text}"
            async with a2a_client(second_replica.url, ALICE, streaming=False) as client:
                final = await client.get_task(GetTaskRequest(id=task.id))
            assert final.status.state == S.TASK_STATE_COMPLETED
            assert [m.parts[0].text for m in final.history] == ["paint", "which colour?", text]

    run(go())


def test_an_answer_to_a_task_that_took_one_already_is_refused(
    running_gateway: RunningGateway,
) -> None:
    async def go() -> None:
        async with a2a_client(running_gateway.url, ALICE, streaming=False) as client:
            [asked] = await send(client, user_message(text="paint", skill="ask"))
            task = asked.task
            running_gateway.jobs.answer_elsewhere(task.id, "green")
            with pytest.raises(UnsupportedOperationError, match=r"another answer|terminal"):
                await send(
                    client, user_message(text="red", task_id=task.id, context_id=task.context_id)
                )
            done = await wait_state(client, task.id, S.TASK_STATE_COMPLETED)
            assert done.artifacts[0].parts[1].text == "you said green"

    run(go())


# --- SubscribeToTask ---------------------------------------------------------------


@pytest.mark.parametrize("where", ["holding", "other"])
def test_subscribe_to_a_task_waiting_for_input_follows_the_answer_from_anywhere(
    running_gateway: RunningGateway, second_replica: RunningGateway, where: str
) -> None:
    """The replica that holds the task parked (it ran the request that asked) and
    another one both stream what follows an answer taken elsewhere, to its end."""
    url = running_gateway.url if where == "holding" else second_replica.url

    async def go() -> None:
        async with a2a_client(running_gateway.url, ALICE, streaming=False) as client:
            [asked] = await send(client, user_message(text="paint", skill="ask"))
        subscriber = asyncio.create_task(subscribe(url, asked.task.id))
        await asyncio.sleep(0.3)
        running_gateway.jobs.answer_elsewhere(asked.task.id, "green")
        seen = await asyncio.wait_for(subscriber, 10)
        assert states(seen) == [
            "task:TASK_STATE_INPUT_REQUIRED",
            "TASK_STATE_WORKING",
            "artifact_update",
            "TASK_STATE_COMPLETED",
        ]

    run(go())


def test_subscribe_on_the_running_replica_repeats_and_loses_nothing(
    running_gateway: RunningGateway,
) -> None:
    """Subscribing at different points of a job's progress: the snapshot plus the
    updates after it hold every step once. The job finishes only after the snapshot
    arrived, so the subscription is always to a running task, however slow the machine."""

    async def go() -> None:
        for delay in (0.0, 0.03, 0.07, 0.12):
            async with a2a_client(running_gateway.url, ALICE, streaming=False) as client:
                [started] = await send(
                    client,
                    user_message(text="x", data={"hold": True}, skill="progress"),
                    return_immediately=True,
                )
            await asyncio.sleep(delay)
            seen: list[StreamResponse] = []
            async with a2a_client(running_gateway.url, ALICE) as client:
                async for r in client.subscribe(SubscribeToTaskRequest(id=started.task.id)):
                    if not seen:
                        running_gateway.jobs.release(started.task.id)
                    seen.append(r)
            snapshot = seen[0].task
            steps = [
                m.parts[0].text
                for m in [*snapshot.history, snapshot.status.message]
                if m.metadata.fields.get("kind") is not None
            ] + [
                r.status_update.status.message.parts[0].text
                for r in seen[1:]
                if r.HasField("status_update") and r.status_update.status.HasField("message")
            ]
            assert steps == ["step 0", "step 1", "step 2"]
            assert states(seen)[-2:] == ["artifact_update", "TASK_STATE_COMPLETED"]

    run(go())


# --- odd numbers -------------------------------------------------------------------


def test_nan_and_infinities_from_an_agent_do_not_break_reads(
    running_gateway: RunningGateway,
) -> None:
    async def go() -> None:
        async with a2a_client(running_gateway.url, ALICE, streaming=False) as client:
            [response] = await send(client, user_message(text="x", skill="nan"))
            task = response.task
            assert task.status.state == S.TASK_STATE_COMPLETED
            assert from_value(task.artifacts[0].parts[0].data) == {
                "high": "Infinity",
                "low": "-Infinity",
            }
            got = await client.get_task(GetTaskRequest(id=task.id))
            progress = got.history[-1]
            assert from_value(progress.parts[1].data) == {"text": "odd numbers", "ratio": "NaN"}
            listed = await client.list_tasks(ListTasksRequest())
            assert [t.id for t in listed.tasks] == [task.id]
        rest = httpx.get(running_gateway.url + "/rest/tasks", headers=RPC_HEADERS)
        assert rest.status_code == 200

    run(go())


# --- a refusal nobody wrote down -----------------------------------------------------


def test_a_refused_submit_whose_replica_died_ends_on_read_and_on_subscribe(
    running_gateway: RunningGateway,
) -> None:
    """The replica that submitted died before writing the coordinator's refusal: the
    task, still SUBMITTED with an empty log, ends with it on any read or stream."""
    store = running_gateway.gateway.store
    jobs = running_gateway.jobs
    refusal = {"type": "InvalidJobError", "message": "payload too big"}

    async def orphan(task_id: str) -> None:
        task = Task(
            id=task_id, context_id=f"ctx-{task_id}", status=TaskStatus(state=S.TASK_STATE_SUBMITTED)
        )
        task.status.timestamp.FromMilliseconds(1_700_000_000_000)
        await store.save(
            task, event=task, prev=None, prev_version=TaskVersion.MISSING, context=ALICE_CONTEXT
        )

    async def go() -> None:
        await orphan("orphan-1")
        jobs.refused["orphan-1"] = refusal
        async with a2a_client(running_gateway.url, ALICE, streaming=False) as client:
            got = await client.get_task(GetTaskRequest(id="orphan-1"))
            assert got.status.state == S.TASK_STATE_REJECTED
            assert got.status.message.parts[0].text == "InvalidJobError: payload too big"
            listed = await client.list_tasks(ListTasksRequest())
            assert [t.status.state for t in listed.tasks] == [S.TASK_STATE_REJECTED]

        await orphan("orphan-2")
        subscriber = asyncio.create_task(subscribe(running_gateway.url, "orphan-2"))
        await asyncio.sleep(0.3)
        jobs.refused["orphan-2"] = refusal
        seen = await asyncio.wait_for(subscriber, 10)
        assert states(seen) == ["task:TASK_STATE_SUBMITTED", "TASK_STATE_REJECTED"]

    run(go())


# --- cancels that cannot be ------------------------------------------------------------


def test_cancel_of_a_job_not_yet_recorded_is_not_cancelable_and_the_task_goes_on(
    running_gateway: RunningGateway,
) -> None:
    async def go() -> None:
        async with a2a_client(running_gateway.url, ALICE, streaming=False) as client:
            [started] = await send(
                client, user_message(text="x", skill="late"), return_immediately=True
            )
            task_id = started.task.id
            with pytest.raises(TaskNotCancelableError):
                await client.cancel_task(CancelTaskRequest(id=task_id))
            running_gateway.jobs.record(task_id)  # the coordinator takes it in at last
            done = await wait_state(client, task_id, S.TASK_STATE_COMPLETED)
            assert from_value(done.artifacts[0].parts[0].data) == {"result": "late"}

    run(go())


def test_cancel_of_a_job_that_ended_first_is_not_cancelable(
    running_gateway: RunningGateway,
) -> None:
    async def go() -> None:
        async with a2a_client(running_gateway.url, ALICE, streaming=False) as client:
            [started] = await send(
                client, user_message(data={"sleep_s": 0.5}, skill="slow"), return_immediately=True
            )
            task_id = started.task.id
            await wait_state(client, task_id, S.TASK_STATE_WORKING)
            running_gateway.jobs.refuse_cancels.add(task_id)
            with pytest.raises(TaskNotCancelableError):
                await client.cancel_task(CancelTaskRequest(id=task_id))

    run(go())


# --- a malformed answer ----------------------------------------------------------------


def test_an_append_to_no_artifact_is_a_malformed_answer(running_gateway: RunningGateway) -> None:
    async def go() -> None:
        async with a2a_client(running_gateway.url, ALICE, streaming=False) as client:
            [response] = await send(client, user_message(text="x", skill="badappend"))
            task = response.task
            assert task.status.state == S.TASK_STATE_FAILED
            text = task.status.message.parts[0].text
            assert "malformed" in text and "'append'" in text
            got = await client.get_task(GetTaskRequest(id=task.id))
            assert (got.status.state, got.status.message.parts[0].text) == (
                S.TASK_STATE_FAILED,
                text,
            )
        async with a2a_client(running_gateway.url, ALICE) as client:
            responses = await send(client, user_message(text="x", skill="badappend"))
            assert states(responses) == [
                "task:TASK_STATE_SUBMITTED",
                "TASK_STATE_WORKING",
                "TASK_STATE_FAILED",
            ]

    run(go())
