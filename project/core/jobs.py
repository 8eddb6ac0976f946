"""Job records in Redis, moved by compare-and-set Lua scripts.

A job's record (hash ``job:{id}``) holds its status, attempt epoch, assignee and,
once final, its result. Every (re)dispatch bumps the epoch, which rides in the
worker's envelope as a fencing token: a worker whose epoch is stale drops the
message, and a completion whose epoch is stale changes nothing. The first valid
completion is the job's one recorded result.

Within one epoch the status only moves forward
(ASSIGNED -> IN_PROGRESS -> COMPLETED / FAILED / ABANDONED); a re-dispatch opens
a new epoch. Every transition is announced on the ``events:jobs`` channel and
appends the envelope that caused it to the job's causal chain.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import JsonValue
from redis import Redis
from redis.typing import EncodableT

from project.core.constants import (
    CHANNEL_JOBS,
    KEY_INTENT,
    KEY_INTENTS,
    KEY_JOB,
    KEY_JOB_CHAIN,
    KEY_JOBS_COUNT,
    KEY_JOBS_OPEN,
    KEY_WORKER_JOBS,
)
from project.core.envelope import Envelope, now_ms
from project.core.models import JobRecord, JobSpec, JobStatus
from project.core.replay import marker_ttl_ms, seen_key

KEY_STATS = "stats:jobs"

_CREATE = """
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('DEL', KEYS[5])
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('HINCRBY', KEYS[3], 'PENDING', 1)
redis.call('PUBLISH', ARGV[3], cjson.encode({job_id=ARGV[1], status='PENDING', epoch=0}))
return 1
"""

_ASSIGN = """
local r = redis.call('HMGET', KEYS[1], 'status', 'epoch', 'assignee', 'attempts', 'dispatch_msg')
local status = r[1]
if not status then return {'missing'} end
if status == 'COMPLETED' or status == 'FAILED' or status == 'ABANDONED' then
  return {'final', status}
end
local epoch = tonumber(r[2])
if epoch ~= tonumber(ARGV[2]) then
  if r[5] == ARGV[8] and status == 'ASSIGNED' then return {'redo', tostring(epoch), r[3]} end
  return {'stale', tostring(epoch)}
end
local attempts = tonumber(r[4]) + 1
if attempts > tonumber(ARGV[5]) then
  return {'exhausted', tostring(epoch), tostring(attempts - 1)}
end
epoch = epoch + 1
redis.call('HSET', KEYS[1], 'status', 'ASSIGNED', 'epoch', epoch, 'assignee', ARGV[3],
  'attempts', attempts, 'updated_ms', ARGV[4], 'dispatch_msg', ARGV[8])
if r[3] and r[3] ~= '' then redis.call('SREM', ARGV[6] .. r[3], ARGV[1]) end
redis.call('SADD', ARGV[6] .. ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
redis.call('HINCRBY', KEYS[3], 'ASSIGNED', 1)
redis.call('RPUSH', KEYS[4], ARGV[9])
redis.call('PUBLISH', ARGV[7], cjson.encode({job_id=ARGV[1], status='ASSIGNED', epoch=epoch,
  assignee=ARGV[3]}))
return {'ok', tostring(epoch)}
"""

_START = """
local r = redis.call('HMGET', KEYS[1], 'status', 'epoch', 'assignee', 'exec_msg', 'runs')
if not r[1] then return 'missing' end
if tonumber(r[2]) ~= tonumber(ARGV[2]) or r[3] ~= ARGV[3] then return 'stale' end
local rerun = r[1] == 'IN_PROGRESS' and r[4] == ARGV[5]
if r[1] ~= 'ASSIGNED' and not rerun then return 'stale' end
local runs = redis.call('HINCRBY', KEYS[1], 'runs', 1)
if runs > tonumber(ARGV[8]) then return 'exhausted' end
redis.call('HINCRBY', KEYS[4], 'handler_executions', 1)
if rerun then
  redis.call('HINCRBY', KEYS[4], 'redeliveries', 1)
  return 'rerun'
end
redis.call('HSET', KEYS[1], 'status', 'IN_PROGRESS', 'updated_ms', ARGV[4], 'exec_msg', ARGV[5])
redis.call('HINCRBY', KEYS[2], 'IN_PROGRESS', 1)
redis.call('RPUSH', KEYS[3], ARGV[7])
redis.call('PUBLISH', ARGV[6], cjson.encode({job_id=ARGV[1], status='IN_PROGRESS',
  epoch=tonumber(ARGV[2]), assignee=ARGV[3]}))
return 'run'
"""

_FINISH = """
local r = redis.call('HMGET', KEYS[1], 'status', 'epoch', 'assignee', 'result', 'error')
if not r[1] then return {'missing'} end
if tonumber(r[2]) ~= tonumber(ARGV[2]) then return {'stale', r[1]} end
if r[1] == 'COMPLETED' or r[1] == 'FAILED' or r[1] == 'ABANDONED' then
  return {'already', r[1], r[4] or '', r[5] or ''}
end
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'result', ARGV[4], 'error', ARGV[5],
  'updated_ms', ARGV[6], 'finished_ms', ARGV[6])
if r[3] and r[3] ~= '' then redis.call('SREM', ARGV[8] .. r[3], ARGV[1]) end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HINCRBY', KEYS[3], ARGV[3], 1)
if ARGV[10] ~= '' then redis.call('RPUSH', KEYS[4], ARGV[10]) end
redis.call('EXPIRE', KEYS[1], ARGV[7])
redis.call('EXPIRE', KEYS[4], ARGV[7])
for i = 5, #KEYS do redis.call('SET', KEYS[i], 'done', 'PX', ARGV[11]) end
redis.call('PUBLISH', ARGV[9], cjson.encode({job_id=ARGV[1], status=ARGV[3],
  epoch=tonumber(ARGV[2]), assignee=r[3] or ''}))
return {'recorded', ARGV[3]}
"""

# A link is a pure function of its envelope, so the same envelope is the same string.
_APPEND_ONCE = """
if redis.call('LPOS', KEYS[1], ARGV[1]) then return 0 end
redis.call('RPUSH', KEYS[1], ARGV[1])
return 1
"""


def chain_link(envelope: Envelope) -> str:
    """The compact record of one envelope in a job's causal chain (JSON)."""
    causal = envelope.causal
    return json.dumps(
        {
            "id": envelope.id,
            "type": envelope.type.value,
            "sender": envelope.sender,
            "recipient": envelope.recipient,
            "request_id": causal.request_id,
            "parent_request_id": causal.parent_request_id,
            "sequence_number": causal.sequence_number,
            "timestamp_ms": causal.timestamp_ms,
        },
        separators=(",", ":"),
    )


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class AssignOutcome:
    """What :meth:`JobStore.assign` did.

    ``kind`` is ``ok`` (assigned, new ``epoch``), ``redo`` (this same dispatch
    message already assigned it to ``assignee`` at ``epoch`` but may not have
    sent it), ``stale`` (someone else moved the job), ``final``, ``missing`` or
    ``exhausted`` (attempts used up; ``epoch`` is the current one).
    """

    kind: str
    epoch: int = 0
    assignee: str = ""
    status: str = ""


@dataclass(frozen=True, slots=True)
class FinishOutcome:
    """What :meth:`JobStore.finish` did: ``recorded``, ``already``, ``stale`` or ``missing``.

    For ``already``, the fields hold the result recorded first.
    """

    kind: str
    status: str = ""
    result: JsonValue = None
    error: dict[str, str] | None = None


class JobStore:
    """Job records in Redis. Every method is one round trip."""

    def __init__(self, redis: Redis, *, result_ttl_s: int) -> None:
        self._redis = redis
        self._result_ttl_s = result_ttl_s
        self._create = redis.register_script(_CREATE)
        self._assign = redis.register_script(_ASSIGN)
        self._start = redis.register_script(_START)
        self._finish = redis.register_script(_FINISH)
        self._append_once = redis.register_script(_APPEND_ONCE)

    def create(self, job_id: str, spec: JobSpec, *, deadline_ms: int) -> bool:
        """Record a new PENDING job. False if a job with this id already exists."""
        now = now_ms()
        fields: dict[str, Any] = {
            "id": job_id,
            "task_type": spec.task_type,
            "status": JobStatus.PENDING.value,
            "epoch": 0,
            "attempts": 0,
            "assignee": "",
            "priority": spec.priority.value,
            "created_ms": now,
            "updated_ms": now,
            "deadline_ms": deadline_ms,
            "payload": _dumps(spec.payload),
            "requirements": spec.requirements.model_dump_json(),
        }
        args: list[Any] = [job_id, now, CHANNEL_JOBS]
        for name, value in fields.items():
            args += [name, value]
        keys = [KEY_JOB + job_id, KEY_JOBS_OPEN, KEY_JOBS_COUNT, KEY_INTENTS, KEY_INTENT + job_id]
        return bool(self._create(keys=keys, args=args))

    def record_intents(self, calls: dict[str, dict[str, Any]]) -> None:
        """Remember submit calls (job id -> call) until the coordinator records them.

        A submit message can be lost if Redis dies between a consumer popping it
        and kombu noting it as unacknowledged; the health check re-publishes
        intents that never became job records. One round trip for any number.
        """
        now = now_ms()
        pipe = self._redis.pipeline(transaction=False)
        for job_id, call in calls.items():
            pipe.set(KEY_INTENT + job_id, _dumps(call), ex=self._result_ttl_s)
        pipe.zadd(KEY_INTENTS, {job_id: now for job_id in calls})
        pipe.execute()

    def forget_intent(self, job_id: str) -> None:
        """Drop a submit intent (the coordinator refused the job, so it is answered)."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.zrem(KEY_INTENTS, job_id)
        pipe.delete(KEY_INTENT + job_id)
        pipe.execute()

    def unrecorded_intents(self, before_ms: int, limit: int = 500) -> dict[str, dict[str, Any]]:
        """Submit calls older than ``before_ms`` that never became job records.

        Each returned intent's timestamp is moved to now, so it is returned again
        only if it is still unrecorded one interval later.
        """
        ids: list[str] = self._redis.zrangebyscore(  # type: ignore[assignment]
            KEY_INTENTS, "-inf", before_ms, start=0, num=limit
        )
        if not ids:
            return {}
        pipe = self._redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.exists(KEY_JOB + job_id)
            pipe.get(KEY_INTENT + job_id)
        replies = pipe.execute()
        found: dict[str, dict[str, Any]] = {}
        cleanup = self._redis.pipeline(transaction=False)
        for index, job_id in enumerate(ids):
            exists, call = replies[2 * index], replies[2 * index + 1]
            if exists or call is None:
                cleanup.zrem(KEY_INTENTS, job_id)
                cleanup.delete(KEY_INTENT + job_id)
            else:
                found[job_id] = json.loads(call)
                cleanup.zadd(KEY_INTENTS, {job_id: now_ms()})
        cleanup.execute()
        return found

    def assign(
        self,
        job_id: str,
        *,
        expected_epoch: int,
        worker_id: str,
        max_attempts: int,
        dispatch: Envelope,
    ) -> AssignOutcome:
        """Assign the job to ``worker_id`` if its epoch is still ``expected_epoch``."""
        keys = [KEY_JOB + job_id, KEY_JOBS_OPEN, KEY_JOBS_COUNT, KEY_JOB_CHAIN + job_id]
        args: list[EncodableT] = [
            job_id,
            expected_epoch,
            worker_id,
            now_ms(),
            max_attempts,
            KEY_WORKER_JOBS,
            CHANNEL_JOBS,
            dispatch.id,
            chain_link(dispatch),
        ]
        reply = self._assign(keys=keys, args=args)
        kind = reply[0]
        if kind in ("ok", "stale"):
            return AssignOutcome(kind, epoch=int(reply[1]))
        if kind == "redo":
            return AssignOutcome(kind, epoch=int(reply[1]), assignee=reply[2])
        if kind == "exhausted":
            return AssignOutcome(kind, epoch=int(reply[1]))
        if kind == "final":
            return AssignOutcome(kind, status=reply[1])
        return AssignOutcome(kind)

    def start(
        self, job_id: str, *, epoch: int, worker_id: str, request: Envelope, max_runs: int
    ) -> str:
        """Move ASSIGNED -> IN_PROGRESS for this worker and epoch.

        Returns ``run`` (first start), ``rerun`` (a redelivery of the same message
        after its worker process died mid-way), ``exhausted`` (the job has been run
        ``max_runs`` times already: a poison job), or ``stale`` / ``missing`` (drop it).
        """
        keys = [KEY_JOB + job_id, KEY_JOBS_COUNT, KEY_JOB_CHAIN + job_id, KEY_STATS]
        args: list[EncodableT] = [
            job_id,
            epoch,
            worker_id,
            now_ms(),
            request.id,
            CHANNEL_JOBS,
            chain_link(request),
            max_runs,
        ]
        return str(self._start(keys=keys, args=args))

    def finish(
        self,
        job_id: str,
        *,
        epoch: int,
        status: JobStatus,
        result: JsonValue = None,
        error: dict[str, str] | None = None,
        cause: Envelope | None = None,
        done_ids: tuple[str, ...] = (),
    ) -> FinishOutcome:
        """Record the job's final status and result, once, if ``epoch`` is current.

        ``cause`` is appended to the causal chain; the envelope ids in ``done_ids``
        are marked done for replay protection in the same atomic step (markers live
        as long as ``cause``'s, which is the newest envelope of the chain).
        """
        if not status.is_final:
            raise ValueError(f"{status} is not a final status")
        done_keys = [seen_key(message_id) for message_id in done_ids]
        ttl_ms = marker_ttl_ms(cause) if cause is not None else 3_600_000
        keys = [KEY_JOB + job_id, KEY_JOBS_OPEN, KEY_JOBS_COUNT, KEY_JOB_CHAIN + job_id, *done_keys]
        args: list[EncodableT] = [
            job_id,
            epoch,
            status.value,
            _dumps(result),
            _dumps(error),
            now_ms(),
            self._result_ttl_s,
            KEY_WORKER_JOBS,
            CHANNEL_JOBS,
            chain_link(cause) if cause is not None else "",
            ttl_ms,
        ]
        reply = self._finish(keys=keys, args=args)
        kind = reply[0]
        if kind == "already":
            return FinishOutcome(
                kind,
                status=reply[1],
                result=json.loads(reply[2]) if reply[2] else None,
                error=json.loads(reply[3]) if reply[3] else None,
            )
        if kind in ("recorded", "stale"):
            return FinishOutcome(kind, status=reply[1])
        return FinishOutcome(kind)

    def append_chain(self, job_id: str, envelope: Envelope) -> bool:
        """Append an envelope to a job's causal chain, once. False if it is there already.

        Idempotent: the client retries a command whose reply a dying Redis never sent
        (it may have run), and a redelivered message appends the same envelope again.
        """
        return bool(self._append_once(keys=[KEY_JOB_CHAIN + job_id], args=[chain_link(envelope)]))

    def get(self, job_id: str) -> JobRecord | None:
        """Read a job's record, or None if there is none."""
        raw: dict[str, str] = self._redis.hgetall(KEY_JOB + job_id)  # type: ignore[assignment]
        if not raw:
            return None
        data: dict[str, Any] = dict(raw)
        for name in ("payload", "requirements", "result", "error"):
            if name in data:
                data[name] = json.loads(data[name])
        if data.get("requirements") is None:
            data.pop("requirements", None)
        if data.get("payload") is None:
            data.pop("payload", None)
        return JobRecord.model_validate(data)

    def chain(self, job_id: str) -> list[dict[str, Any]]:
        """The causal chain of a job, oldest first."""
        links: list[str] = self._redis.lrange(KEY_JOB_CHAIN + job_id, 0, -1)  # type: ignore[assignment]
        return [json.loads(link) for link in links]

    def counts(self) -> dict[str, int]:
        """How many jobs ever reached each status."""
        raw: dict[str, str] = self._redis.hgetall(KEY_JOBS_COUNT)  # type: ignore[assignment]
        return {status: int(count) for status, count in raw.items()}

    def stats(self) -> dict[str, int]:
        """Handler executions and redeliveries counted by the workers."""
        raw: dict[str, str] = self._redis.hgetall(KEY_STATS)  # type: ignore[assignment]
        return {name: int(count) for name, count in raw.items()}

    def open_jobs_of(self, worker_id: str) -> set[str]:
        """Unfinished jobs currently assigned to a worker."""
        members: set[str] = self._redis.smembers(KEY_WORKER_JOBS + worker_id)  # type: ignore[assignment]
        return members

    def open_jobs_untouched_since(self, before_ms: int, limit: int = 500) -> list[str]:
        """Unfinished jobs whose record has not changed since ``before_ms``."""
        ids: list[str] = self._redis.zrangebyscore(  # type: ignore[assignment]
            KEY_JOBS_OPEN, "-inf", before_ms, start=0, num=limit
        )
        return ids
