"""Job records in Redis, moved by compare-and-set Lua scripts.

A job's record (hash ``job:{id}``) holds its status, attempt epoch, assignee and,
once final, its result. Every (re)dispatch bumps the epoch, which rides in the
worker's envelope as a fencing token: a worker whose epoch is stale drops the
message, and a completion whose epoch is stale changes nothing. The first valid
completion is the job's one recorded result.

Within one epoch the status only moves forward
(ASSIGNED -> IN_PROGRESS [-> INPUT_REQUIRED] -> COMPLETED / FAILED / CANCELED / ABANDONED);
a re-dispatch opens a new epoch (a resumed agent goes INPUT_REQUIRED -> PENDING and is
dispatched again). ``cancel`` ends a job from any unfinished status. Every transition is
announced on the ``events:jobs`` channel, appended to the job's event log (stream
``joblog:{id}``, see :mod:`project.core.state.joblog`), and appends the envelope that caused
it to the job's causal chain.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import JsonValue
from redis import Redis
from redis.typing import EncodableT

from project.core.a2a.envelope import Envelope, now_ms
from project.core.constants import (
    CHANNEL_JOBS,
    KEY_INTENTS,
    KEY_JOB,
    KEY_JOB_LOG,
    KEY_JOBS_COUNT,
    KEY_JOBS_OPEN,
    KEY_JOBS_OWNER,
    KEY_JOBS_WAITING,
    KEY_STATS_JOBS,
    KEY_WORKER_JOBS,
    checkpoint_keys,
)
from project.core.models import JobRecord, JobSpec, JobStatus
from project.core.state.lua import load_script

CHAIN_FIELD = "link:"
"""Prefix of the job record's fields that hold its causal chain."""


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


OWNER_INDEX_CAP = 10_000
"""An owner's job index keeps this many of its newest jobs."""

_JSON_OPTIONAL = ("interrupts", "resume", "a2a_message")
"""Record fields stored as JSON that only some jobs have."""


def _closing_keys(job_id: str) -> list[str]:
    """The keys the scripts that end a job (finish, cancel) take, in their order."""
    return [
        KEY_JOB + job_id,
        KEY_JOBS_OPEN,
        KEY_JOBS_COUNT,
        KEY_JOBS_WAITING,
        KEY_JOB_LOG + job_id,
        *checkpoint_keys(job_id),
    ]


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


class AssignKind(StrEnum):
    """What :meth:`JobStore.assign` did (the values are what its script returns)."""

    OK = "ok"
    """Assigned: the job is at a new epoch."""
    REDO = "redo"
    """This same dispatch message assigned it already (to ``assignee``) but may not
    have sent the work order."""
    STALE = "stale"
    """Someone else moved the job past the expected epoch."""
    FINAL = "final"
    """The job is already final."""
    MISSING = "missing"
    """There is no such job."""
    EXHAUSTED = "exhausted"
    """Its attempts are used up; ``epoch`` is the current one."""


class StartKind(StrEnum):
    """What :meth:`JobStore.start` did (the values are what its script returns)."""

    RUN = "run"
    """First start of this epoch: run it."""
    RERUN = "rerun"
    """A redelivery of the same work order after its worker process died: run it again."""
    FINAL = "final"
    """The job is already final: the work order is a copy of a finished one (a replay)."""
    EXHAUSTED = "exhausted"
    """Started ``max_runs`` times already by workers that died: a poison job."""
    CANCELED = "canceled"
    """The job was canceled: drop the order."""
    STALE = "stale"
    """Another epoch, a final job or no job: drop the order."""


class FinishKind(StrEnum):
    """What :meth:`JobStore.finish` did (the values are what its script returns)."""

    RECORDED = "recorded"
    """This call recorded the job's one result."""
    ALREADY = "already"
    """A result was recorded first; the outcome holds it."""
    STALE = "stale"
    """Another epoch: nothing changed."""
    MISSING = "missing"
    """There is no such job."""


@dataclass(frozen=True, slots=True)
class AssignOutcome:
    """What :meth:`JobStore.assign` did, with the epoch and assignee it concerns."""

    kind: AssignKind
    epoch: int = 0
    assignee: str = ""
    status: str = ""


@dataclass(frozen=True, slots=True)
class FinishOutcome:
    """What :meth:`JobStore.finish` did; for ``ALREADY`` the fields hold the first result."""

    kind: FinishKind
    status: str = ""
    result: JsonValue = None
    error: dict[str, str] | None = None


class JobStore:
    """Job records in Redis. Every method is one round trip."""

    def __init__(self, redis: Redis, *, result_ttl_s: int, log_cap: int = 1000) -> None:
        self._redis = redis
        self._result_ttl_s = result_ttl_s
        self._log_cap = log_cap
        self._create = redis.register_script(load_script("job_create"))
        self._assign = redis.register_script(load_script("job_assign"))
        self._start = redis.register_script(load_script("job_start"))
        self._finish = redis.register_script(load_script("job_finish"))
        self._park = redis.register_script(load_script("job_park"))
        self._resume = redis.register_script(load_script("job_resume"))
        self._cancel = redis.register_script(load_script("job_cancel"))
        self._retry = redis.register_script(load_script("job_retry"))

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
            **({"deadline_s": spec.deadline_s} if spec.deadline_s is not None else {}),
            **(
                {"input_timeout_s": spec.input_timeout_s}
                if spec.input_timeout_s is not None
                else {}
            ),
            **({"a2a_message": _dumps(spec.a2a_message)} if spec.a2a_message else {}),
            **({"owner": spec.owner} if spec.owner else {}),
            "payload": _dumps(spec.payload),
            "requirements": spec.requirements.model_dump_json(),
        }
        args: list[Any] = [job_id, now, CHANNEL_JOBS, self._log_cap, OWNER_INDEX_CAP]
        for name, value in fields.items():
            args += [name, value]
        keys = [
            KEY_JOB + job_id,
            KEY_JOBS_OPEN,
            KEY_JOBS_COUNT,
            KEY_INTENTS,
            KEY_JOB_LOG + job_id,
            *([KEY_JOBS_OWNER + spec.owner] if spec.owner else []),
        ]
        return bool(self._create(keys=keys, args=args))

    def record_intents(self, calls: dict[str, dict[str, Any]]) -> None:
        """Remember submit calls (job id -> call) until the coordinator records them.

        A submit message can be lost if Redis dies between a consumer popping it
        and kombu noting it as unacknowledged; the health check re-publishes
        intents that never became job records. One round trip for any number.
        """
        if not calls:
            return
        now = now_ms()
        self._redis.hset(
            KEY_INTENTS,
            mapping={job_id: _dumps({"ms": now, "call": call}) for job_id, call in calls.items()},
        )

    def forget_intent(self, job_id: str) -> None:
        """Drop a submit intent (the coordinator refused the job, so it is answered)."""
        self._redis.hdel(KEY_INTENTS, job_id)

    def unrecorded_intents(self, before_ms: int, limit: int = 500) -> dict[str, dict[str, Any]]:
        """Submit calls older than ``before_ms`` that never became job records.

        Each returned intent's timestamp is moved to now, so it is returned again
        only if it is still unrecorded one interval later. Intents live in one hash
        (``jobs:intents``), written with one command per submit call and dropped by
        the script that creates the job; few are ever older than an interval.
        """
        old: dict[str, dict[str, Any]] = {}
        for job_id, raw in self._redis.hscan_iter(KEY_INTENTS, count=1000):
            try:
                intent = json.loads(raw)
                if int(intent["ms"]) <= before_ms:
                    old[str(job_id)] = intent["call"]
            except (ValueError, KeyError, TypeError):
                old[str(job_id)] = {}  # unreadable: dropped below
            if len(old) >= limit:
                break
        if not old:
            return {}
        ids = list(old)
        pipe = self._redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.exists(KEY_JOB + job_id)
        exists = pipe.execute()
        found = {j: old[j] for j, e in zip(ids, exists, strict=True) if not e and old[j]}
        cleanup = self._redis.pipeline(transaction=False)
        stale = [j for j in ids if j not in found]
        if stale:
            cleanup.hdel(KEY_INTENTS, *stale)
        if found:
            now = now_ms()
            cleanup.hset(
                KEY_INTENTS,
                mapping={j: _dumps({"ms": now, "call": call}) for j, call in found.items()},
            )
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
        keys = [KEY_JOB + job_id, KEY_JOBS_OPEN, KEY_JOBS_COUNT, KEY_JOB_LOG + job_id]
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
            self._log_cap,
        ]
        reply = self._assign(keys=keys, args=args)
        kind = AssignKind(reply[0])
        if kind in (AssignKind.OK, AssignKind.STALE, AssignKind.EXHAUSTED):
            return AssignOutcome(kind, epoch=int(reply[1]))
        if kind is AssignKind.REDO:
            return AssignOutcome(kind, epoch=int(reply[1]), assignee=reply[2])
        if kind is AssignKind.FINAL:
            return AssignOutcome(kind, status=reply[1])
        return AssignOutcome(kind)

    def start(
        self,
        job_id: str,
        *,
        epoch: int,
        worker_id: str,
        request: Envelope,
        max_runs: int,
        kind: str = "handler",
    ) -> StartKind:
        """Move ASSIGNED -> IN_PROGRESS for this worker and epoch (see :class:`StartKind`)."""
        keys = [KEY_JOB + job_id, KEY_STATS_JOBS, KEY_JOB_LOG + job_id]
        args: list[EncodableT] = [
            job_id,
            epoch,
            worker_id,
            now_ms(),
            request.id,
            CHANNEL_JOBS,
            chain_link(request),
            max_runs,
            kind,
            self._log_cap,
        ]
        reply = str(self._start(keys=keys, args=args))
        return StartKind(reply) if reply in StartKind.__members__.values() else StartKind.STALE

    def finish(
        self,
        job_id: str,
        *,
        epoch: int,
        status: JobStatus,
        result: JsonValue = None,
        error: dict[str, str] | None = None,
        cause: Envelope | None = None,
        event: Envelope | None = None,
        only_from: JobStatus | None = None,
    ) -> FinishOutcome:
        """Record the job's final status and result, once, if ``epoch`` is current.

        ``cause`` and then ``event`` (the signed EVENT for the coordinator) are
        appended to the causal chain, and ``event`` rides whole in the final
        announcement on ``events:jobs``, all in the same atomic step. With
        ``only_from``, a job in any other status is left alone (``STALE``).
        """
        if not status.is_final:
            raise ValueError(f"{status} is not a final status")
        keys = _closing_keys(job_id)
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
            chain_link(event) if event is not None else "",
            _dumps(event.to_wire()) if event is not None else "",
            only_from.value if only_from is not None else "",
            self._log_cap,
        ]
        reply = self._finish(keys=keys, args=args)
        kind = FinishKind(reply[0])
        if kind is FinishKind.ALREADY:
            return FinishOutcome(
                kind,
                status=reply[1],
                result=json.loads(reply[2]) if reply[2] else None,
                error=json.loads(reply[3]) if reply[3] else None,
            )
        if kind in (FinishKind.RECORDED, FinishKind.STALE):
            return FinishOutcome(kind, status=reply[1])
        return FinishOutcome(kind)

    def park(
        self,
        job_id: str,
        *,
        epoch: int,
        interrupts: list[dict[str, JsonValue]],
        cause: Envelope | None = None,
    ) -> bool:
        """Park a running agent that waits for input (IN_PROGRESS -> INPUT_REQUIRED).

        Returns False if the job is not running at ``epoch`` (nothing changed).
        """
        keys = [KEY_JOB + job_id, KEY_JOBS_OPEN, KEY_JOBS_WAITING, KEY_JOB_LOG + job_id]
        args: list[EncodableT] = [
            job_id,
            epoch,
            _dumps(interrupts),
            now_ms(),
            KEY_WORKER_JOBS,
            CHANNEL_JOBS,
            chain_link(cause) if cause is not None else "",
            self._log_cap,
        ]
        return bool(self._park(keys=keys, args=args)[0] == "parked")

    def resume(
        self,
        job_id: str,
        answer: dict[str, JsonValue],
        *,
        a2a_message: dict[str, JsonValue] | None = None,
    ) -> tuple[str, str]:
        """Take the answer to a parked agent's interrupts (INPUT_REQUIRED -> PENDING).

        Returns ``("resumed", new epoch)``, ``("not_waiting", status)`` or ``("missing", "")``.
        """
        keys = [KEY_JOB + job_id, KEY_JOBS_OPEN, KEY_JOBS_WAITING, KEY_JOB_LOG + job_id]
        args: list[EncodableT] = [
            job_id,
            _dumps(answer),
            now_ms(),
            _dumps(a2a_message) if a2a_message else "",
            CHANNEL_JOBS,
            self._log_cap,
        ]
        reply = self._resume(keys=keys, args=args)
        return str(reply[0]), str(reply[1]) if len(reply) > 1 else ""

    def cancel(self, job_id: str, error: dict[str, str]) -> list[str]:
        """End an unfinished job as CANCELED.

        Returns ``["canceled", previous status, epoch, assignee, kind]``,
        ``["final", status]`` (nothing changed) or ``["missing"]``.
        """
        keys = _closing_keys(job_id)
        args: list[EncodableT] = [
            job_id,
            now_ms(),
            _dumps(error),
            self._result_ttl_s,
            KEY_WORKER_JOBS,
            CHANNEL_JOBS,
            self._log_cap,
        ]
        return [str(part) for part in self._cancel(keys=keys, args=args)]

    def count_retry(self, job_id: str, epoch: int) -> bool:
        """Count one retry of the run at ``epoch`` by its retry policy. False: that run is
        no longer the job's (canceled, re-routed, final): it must not retry."""
        return int(self._retry(keys=[KEY_JOB + job_id], args=[epoch])) >= 0

    def waiting_past(self, when_ms: int, limit: int = 500) -> list[str]:
        """Parked jobs whose input deadline is at or before ``when_ms``."""
        ids: list[str] = self._redis.zrangebyscore(  # type: ignore[assignment]
            KEY_JOBS_WAITING, "-inf", when_ms, start=0, num=limit
        )
        return ids

    def stop_waiting(self, job_id: str) -> None:
        """Take a job out of ``jobs:waiting`` (its input timeout is dealt with)."""
        self._redis.zrem(KEY_JOBS_WAITING, job_id)

    def owned_by(
        self,
        owner: str,
        *,
        limit: int,
        before_ms: int | None = None,
        before_id: str | None = None,
    ) -> list[str]:
        """Ids of an owner's jobs, newest first (some may have expired).

        To page back, pass the last job shown as ``before_ms`` (its creation time) and
        ``before_id``: jobs created in the same millisecond are told apart by id (the
        index orders equal times by id). ``before_ms`` alone lists only older jobs.
        """
        key = KEY_JOBS_OWNER + owner
        if before_ms is None:
            ids: list[str] = self._redis.zrevrange(key, 0, limit - 1)  # type: ignore[assignment]
            return ids
        if before_id is None:
            older: list[str] = self._redis.zrevrangebyscore(  # type: ignore[assignment]
                key, f"({before_ms}", "-inf", start=0, num=limit
            )
            return older
        same: list[str] = self._redis.zrevrangebyscore(  # type: ignore[assignment]
            key, before_ms, before_ms
        )
        tied = [job_id for job_id in same if job_id < before_id]
        return (
            tied[:limit]
            + self.owned_by(owner, limit=limit - len(tied), before_ms=before_ms)[
                : max(0, limit - len(tied))
            ]
        )

    def forget_owned(self, owner: str, job_ids: list[str]) -> None:
        """Drop expired jobs from an owner's index."""
        if job_ids:
            self._redis.zrem(KEY_JOBS_OWNER + owner, *job_ids)

    def get(self, job_id: str) -> JobRecord | None:
        """Read a job's record, or None if there is none."""
        raw: dict[str, str] = self._redis.hgetall(KEY_JOB + job_id)  # type: ignore[assignment]
        if not raw:
            return None
        data: dict[str, Any] = {k: v for k, v in raw.items() if not k.startswith(CHAIN_FIELD)}
        for name in ("payload", "requirements", "result", "error", *_JSON_OPTIONAL):
            if name in data:
                data[name] = json.loads(data[name])
        for name in ("requirements", "payload", "interrupts"):
            if data.get(name) is None:
                data.pop(name, None)
        return JobRecord.model_validate(data)

    def chain(self, job_id: str) -> list[dict[str, Any]]:
        """The causal chain of a job, oldest first.

        The links live in the job's record, one field per step of each epoch
        (``link:{epoch}:{a dispatch | b work order | c response | d event}``), written
        by the script that makes that step: no command of its own, and a step run
        twice (a redelivery) writes its one link again.
        """
        raw: dict[str, str] = self._redis.hgetall(KEY_JOB + job_id)  # type: ignore[assignment]
        return [json.loads(raw[name]) for name in sorted(raw) if name.startswith(CHAIN_FIELD)]

    def counts(self) -> dict[str, int]:
        """How many jobs ever reached each status."""
        raw: dict[str, str] = self._redis.hgetall(KEY_JOBS_COUNT)  # type: ignore[assignment]
        return {status: int(count) for status, count in raw.items()}

    def stats(self) -> dict[str, int]:
        """Handler executions and redeliveries counted by the workers."""
        raw: dict[str, str] = self._redis.hgetall(KEY_STATS_JOBS)  # type: ignore[assignment]
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
