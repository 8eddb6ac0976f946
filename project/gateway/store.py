"""The SDK's ``VersionedTaskStore`` on Redis: a task is its record folded with its job's log.

A task's **record** (``gateway:task:{id}``, a hash) holds what the job does not: the
caller that owns it, its context id, its messages, and the task as the gateway last
wrote it (the SDK writes it on every event, compare-and-set on a write counter). The
**job log** (``joblog:{id}``, written by the tiers) holds everything the job did. A
read folds the log events after the record's cursor into the record's task
(:func:`project.gateway.mapping.fold`), so a task is up to date whichever replica reads
it, even when the replica that ran the request is gone. Nothing lives in a gateway
process: any replica serves any task.

A write that moves a task to CANCELED cancels its job (``project.cancel_job``): that is
how "cancel" reaches the job record from any replica.

Two ends are not the last word. A FAILED the SDK wrote without the job's log behind it
(after an error in the gateway, while the job carried on) is marked in the record
(``unlogged_end``); a read takes it back as soon as the job has a log, and the log says
how the task goes on. And a task still SUBMITTED with an empty log may be a submit the
coordinator refused before recording a job (with the replica that sent it gone): a read
asks for that refusal (``Jobs.intake_refusal``) and ends the task with it.
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass
from typing import Final

from a2a.server.cluster.task_store import (
    ConcurrentTaskModificationError,
    StoredTask,
    VersionedTaskStore,
)
from a2a.server.cluster.version import TaskVersion
from a2a.server.context import ServerCallContext
from a2a.server.events.event_queue import Event
from a2a.types.a2a_pb2 import (
    ListTasksRequest,
    ListTasksResponse,
    Task,
    TaskState,
    TaskStatus,
    TaskStatusUpdateEvent,
)
from a2a.utils.constants import DEFAULT_LIST_TASKS_PAGE_SIZE
from a2a.utils.errors import InvalidParamsError
from a2a.utils.task import ListTasksCursor, decode_list_tasks_cursor, encode_list_tasks_cursor
from redis import Redis

from project.core.a2a.envelope import now_ms
from project.core.constants import KEY_GATEWAY_TASK, KEY_GATEWAY_TASKS
from project.core.errors import JobNotFoundError
from project.gateway.jobs import Jobs, Threads
from project.gateway.lua import load_script
from project.gateway.mapping import (
    CURSOR_KEY,
    TERMINAL_STATES,
    apply,
    cursor_of_task,
    fold,
    refusal,
)
from project.gateway.versions import counter_of, cursor_of, pack

__all__ = [
    "LIST_LIMIT",
    "RedisTaskStore",
    "TaskRecord",
    "TaskRecords",
]

LIST_LIMIT: Final = 1000
"""ListTasks looks at a caller's most recent tasks up to this many."""

_CONFLICT: Final = -1
_FOREIGN: Final = -2


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """A task's record as stored."""

    task: Task
    counter: int
    owner: str
    unlogged_end: bool = False
    """The task's FAILED was written without its job's log behind it (see the module
    docstring)."""


_FIELDS: Final = ["task", "counter", "owner", "unlogged_end"]


def caller_of(context: ServerCallContext) -> str:
    """The authenticated caller a request runs for (the owner of the tasks it makes)."""
    return context.user.user_name if context.user.is_authenticated else ""


def _later(a: str | None, b: str | None) -> str | None:
    """The later of two stream ids (None is before everything)."""
    if a is None or b is None:
        return a or b

    def key(cursor: str) -> tuple[int, int]:
        ms, _, seq = cursor.partition("-")
        return int(ms), int(seq or 0)

    return a if key(a) >= key(b) else b


class TaskRecords:
    """The task records in Redis (synchronous; the store runs it in threads)."""

    def __init__(self, redis: Redis, *, ttl_s: int) -> None:
        self._redis = redis
        self._ttl_s = ttl_s
        self._save = redis.register_script(load_script("task_save"))

    def save(
        self, task: Task, owner: str, *, mode: str, expected: int, unlogged_end: bool = False
    ) -> int:
        """Write ``task``'s record; returns its new counter, or -1 (conflict) / -2 (foreign)."""
        blob = base64.b64encode(task.SerializeToString()).decode("ascii")
        reply = self._save(
            keys=[KEY_GATEWAY_TASK + task.id, KEY_GATEWAY_TASKS + owner],
            args=[
                mode,
                expected,
                blob,
                owner,
                task.id,
                now_ms(),
                self._ttl_s,
                "1" if unlogged_end else "0",
            ],
        )
        return int(reply)

    @staticmethod
    def _decode(fields: list[str | bytes | None]) -> TaskRecord | None:
        blob, counter, owner, unlogged_end = fields
        if blob is None or counter is None or owner is None:
            return None
        owner_text = owner.decode() if isinstance(owner, bytes) else owner
        return TaskRecord(
            Task.FromString(base64.b64decode(blob)),
            int(counter),
            owner_text,
            unlogged_end=unlogged_end is not None,
        )

    def load(self, task_id: str) -> TaskRecord | None:
        """The record of ``task_id``, or None."""
        return self._decode(self._redis.hmget(KEY_GATEWAY_TASK + task_id, _FIELDS))

    def load_many(self, task_ids: list[str]) -> list[TaskRecord | None]:
        """Records of several tasks, in one round trip."""
        pipe = self._redis.pipeline(transaction=False)
        for task_id in task_ids:
            pipe.hmget(KEY_GATEWAY_TASK + task_id, _FIELDS)
        return [self._decode(fields) for fields in pipe.execute()]

    def owned(self, owner: str, limit: int) -> list[str]:
        """The ids of ``owner``'s most recent tasks, newest first."""
        ids = self._redis.zrevrange(KEY_GATEWAY_TASKS + owner, 0, limit - 1)
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]

    def delete(self, task_id: str, owner: str) -> None:
        """Forget a task's record."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.delete(KEY_GATEWAY_TASK + task_id)
        pipe.zrem(KEY_GATEWAY_TASKS + owner, task_id)
        pipe.execute()


def _reopened(task: Task) -> Task:
    """A copy of ``task`` with its unlogged end taken back: the state it had on the log."""
    reopened = Task()
    reopened.CopyFrom(task)
    before = (
        TaskState.TASK_STATE_SUBMITTED
        if cursor_of_task(task) is None
        else TaskState.TASK_STATE_WORKING
    )
    reopened.status.CopyFrom(TaskStatus(state=before, timestamp=task.status.timestamp))
    return reopened


def _logged(event: Event | None) -> bool:
    """True for a status update read from the job's log (it carries its cursor)."""
    return (
        isinstance(event, TaskStatusUpdateEvent)
        and event.HasField("metadata")
        and CURSOR_KEY in event.metadata.fields
    )


def _sort_key(task: Task) -> tuple[bool, int, str]:
    has_ts = task.status.HasField("timestamp")
    return (has_ts, task.status.timestamp.ToNanoseconds() if has_ts else 0, task.id)


class RedisTaskStore(VersionedTaskStore):
    """Tasks as task records folded with their jobs' logs (see the module docstring)."""

    def __init__(self, records: TaskRecords, jobs: Jobs, threads: Threads) -> None:
        self._records = records
        self._jobs = jobs
        self._threads = threads

    async def _view(self, record: TaskRecord) -> StoredTask:
        """The task of ``record`` brought up to date with its job's log, and its version."""
        task = record.task
        cursor = cursor_of_task(task)
        state = task.status.state
        if state in TERMINAL_STATES and not record.unlogged_end:
            return StoredTask(task, pack(cursor, record.counter))
        events = await self._jobs.read_log(task.id, cursor)
        if not events and cursor is None:  # no job log (yet, or ever)
            if state == TaskState.TASK_STATE_SUBMITTED:
                refused = await self._jobs.intake_refusal(task.id)
                if refused is not None:
                    ms = task.status.timestamp.ToMilliseconds() or now_ms()
                    apply(task, refusal(task.id, task.context_id, refused, now_ms=ms))
            return StoredTask(task, pack(cursor, record.counter))
        if state in TERMINAL_STATES:  # an unlogged end, and the job has a log: the log says
            task = _reopened(task)
        cursor = _later(cursor, fold(task, events))
        return StoredTask(task, pack(cursor, record.counter))

    async def get(self, task_id: str, context: ServerCallContext) -> StoredTask | None:
        """The caller's task ``task_id`` with its version, or None (absent or not theirs)."""
        record = await self._threads.call(self._records.load, task_id)
        if record is None or record.owner != caller_of(context):
            return None
        return await self._view(record)

    async def peek(self, task_id: str) -> Task | None:
        """The stored task, whoever owns it, not folded (the event stream reads it); an
        unlogged end is taken back if the job has a log (see the module docstring)."""
        record = await self._threads.call(self._records.load, task_id)
        if record is None:
            return None
        task = record.task
        if (
            record.unlogged_end
            and task.status.state in TERMINAL_STATES
            and (cursor_of_task(task) is not None or await self._jobs.read_log(task_id, None))
        ):
            return _reopened(task)
        return task

    async def _cancel_job(self, task: Task) -> None:
        """Carry a CANCELED write to the job; raises if the job cannot be canceled."""
        try:
            outcome = await self._jobs.cancel(task.id)
        except JobNotFoundError:
            # Not recorded yet (its submit is on its way to the coordinator): a cancel now
            # could not stop it. The SDK answers TaskNotCancelable; the caller may retry.
            raise ConcurrentTaskModificationError(task.id) from None
        if not outcome.canceled and outcome.status != "CANCELED":
            raise ConcurrentTaskModificationError(task.id)  # it ended first

    async def save(
        self,
        task: Task,
        *,
        event: Event | None,
        prev: Task | None,
        prev_version: TaskVersion,
        context: ServerCallContext,
    ) -> TaskVersion:
        """Write ``task``; see ``VersionedTaskStore.save``.

        Raises:
            ConcurrentTaskModificationError: ``prev_version`` is stale, or a cancel
                found the task final (or its job not yet recorded).
        """
        del prev
        owner = caller_of(context)
        # A FAILED not read from the job's log: the SDK's, after an error in the gateway.
        unlogged_end = task.status.state == TaskState.TASK_STATE_FAILED and not _logged(event)
        if task.status.state == TaskState.TASK_STATE_CANCELED:
            stored = await self.get(task.id, context)
            if stored is None:
                raise ConcurrentTaskModificationError(task.id)
            state = stored.task.status.state
            if state != TaskState.TASK_STATE_CANCELED:  # else: the job's log said so first
                if state in TERMINAL_STATES:
                    raise ConcurrentTaskModificationError(task.id)
                await self._cancel_job(task)
            mode = "force"
        else:
            mode = "create" if prev_version.is_missing else "cas"
        counter = await self._threads.call(
            self._records.save,
            task,
            owner,
            mode=mode,
            expected=counter_of(prev_version),
            unlogged_end=unlogged_end,
        )
        if counter in (_CONFLICT, _FOREIGN):
            raise ConcurrentTaskModificationError(task.id)
        cursor = _later(cursor_of(prev_version), cursor_of_task(task))
        return pack(cursor, counter)

    async def list(self, params: ListTasksRequest, context: ServerCallContext) -> ListTasksResponse:
        """The caller's tasks, most recently updated first, filtered and paged."""
        owner = caller_of(context)
        ids = await self._threads.call(self._records.owned, owner, LIST_LIMIT)
        records = await self._threads.call(self._records.load_many, ids)
        views = await asyncio.gather(
            *(self._view(r) for r in records if r is not None and r.owner == owner)
        )
        tasks = [v.task for v in views]
        if params.context_id:
            tasks = [t for t in tasks if t.context_id == params.context_id]
        if params.status:
            tasks = [t for t in tasks if t.status.state == params.status]
        if params.HasField("status_timestamp_after"):
            after_ns = params.status_timestamp_after.ToNanoseconds()
            tasks = [
                t
                for t in tasks
                if t.status.HasField("timestamp") and t.status.timestamp.ToNanoseconds() >= after_ns
            ]
        tasks.sort(key=_sort_key, reverse=True)
        total = len(tasks)
        start = 0
        if params.page_token:
            cursor = decode_list_tasks_cursor(params.page_token)
            if cursor is None:
                raise InvalidParamsError(message="invalid page token")
            after = cursor.sort_key()
            start = next((i for i, t in enumerate(tasks) if _sort_key(t) < after), total)
        size = params.page_size or DEFAULT_LIST_TASKS_PAGE_SIZE
        page = tasks[start : start + size]
        next_token = ""
        if start + size < total and page:
            last = page[-1]
            has_ts = last.status.HasField("timestamp")
            next_token = encode_list_tasks_cursor(
                ListTasksCursor(last.status.timestamp.ToNanoseconds() if has_ts else None, last.id)
            )
        return ListTasksResponse(
            tasks=page, next_page_token=next_token, page_size=size, total_size=total
        )

    async def delete(self, task_id: str, context: ServerCallContext) -> None:
        """Forget the caller's task ``task_id`` (its job is left as it is)."""
        owner = caller_of(context)
        record = await self._threads.call(self._records.load, task_id)
        if record is not None and record.owner == owner:
            await self._threads.call(self._records.delete, task_id, owner)
