"""Each job's event log: an ordered, capped Redis stream (``joblog:{id}``).

The job scripts append every status change; a running agent appends each super-step's
update and each custom event its nodes write (LangGraph's ``get_stream_writer()``). Each
event's id is its stream id, a cursor: reading ``after`` a cursor continues exactly where a
reader left off, so a client that reconnects loses nothing that is still in the log (the
log keeps about ``job_log_max_events``; the oldest go first). The log expires with the
job's record.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, JsonValue
from redis import Redis

from project.core.a2a.envelope import now_ms
from project.core.constants import KEY_INTENTS, KEY_JOB, KEY_JOB_LOG
from project.core.models import FINAL_STATUSES
from project.core.state.lua import load_script

__all__ = ["JobLog", "JobLogEvent"]

_FINAL = frozenset(s.value for s in FINAL_STATUSES)
_BATCH = 100


class JobLogEvent(BaseModel):
    """One event of a job's log."""

    model_config = ConfigDict(frozen=True)

    id: str
    """The cursor: pass it as ``after`` to read on from here."""
    ms: int
    """When it was appended (ms since the epoch, the appender's clock)."""
    kind: Literal["status", "update", "custom"]
    """``status``: the job's status changed; ``update``: a super-step's state update
    (``{node: update}``); ``custom``: what a node wrote with ``get_stream_writer()``."""
    data: dict[str, JsonValue]

    @property
    def is_final(self) -> bool:
        """True for the status event that ends the job."""
        return self.kind == "status" and self.data.get("status") in _FINAL


def _event(entry_id: str, fields: dict[str, str]) -> JobLogEvent:
    data = json.loads(fields.get("d", "{}"))
    return JobLogEvent(
        id=entry_id,
        ms=int(fields.get("ms", 0)),
        kind=fields.get("k", "custom"),
        data=data if isinstance(data, dict) else {"value": data},
    )


class JobLog:
    """Appends to and reads the jobs' event logs. ``redis`` decodes responses."""

    def __init__(self, redis: Redis, *, cap: int) -> None:
        self._redis = redis
        self._cap = cap
        self._append = redis.register_script(load_script("joblog_append"))

    def append(self, job_id: str, epoch: int, events: list[tuple[str, Any]]) -> str:
        """Append ``(kind, data)`` events of a run at ``epoch`` (one round trip).

        Returns '' if they were appended, else the job's status (the run is stale or the
        job was canceled or finished: nothing was written).
        """
        args: list[Any] = [epoch, self._cap, now_ms()]
        for kind, data in events:
            args += [kind, json.dumps(data, separators=(",", ":"))]
        return str(self._append(keys=[KEY_JOB + job_id, KEY_JOB_LOG + job_id], args=args))

    def read(self, job_id: str, after: str | None = None, count: int = _BATCH) -> list[JobLogEvent]:
        """Events after the cursor ``after`` (from the start if None), oldest first."""
        low = f"({after}" if after else "-"
        rows: list[tuple[str, dict[str, str]]] = self._redis.xrange(  # type: ignore[assignment]
            KEY_JOB_LOG + job_id, low, "+", count=count
        )
        return [_event(entry_id, fields) for entry_id, fields in rows]

    def _rest(self, job_id: str, cursor: str) -> Iterator[JobLogEvent]:
        """Every event after ``cursor`` up to the final one, however many there are."""
        after = None if cursor == "0-0" else cursor
        while True:
            batch = self.read(job_id, after)
            for event in batch:
                yield event
                if event.is_final:
                    return
            if len(batch) < _BATCH:
                return
            after = batch[-1].id

    def _over(self, job_id: str) -> bool:
        """True if no event can follow: the job is final (its final event is written by
        the script that makes it final), or there is no such job (a submit not yet
        recorded has its intent: it is coming)."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.hget(KEY_JOB + job_id, "status")
        pipe.exists(KEY_JOB_LOG + job_id)
        pipe.hexists(KEY_INTENTS, job_id)
        status, logged, intended = pipe.execute()
        if status is not None:
            return status in _FINAL
        return not logged and not intended

    def follow(
        self, job_id: str, after: str | None = None, *, block_s: float | None = None
    ) -> Iterator[JobLogEvent]:
        """Events after ``after`` as they come, until the job's final status event.

        Reads what is there, then waits for more with ``XREAD BLOCK`` (one round trip per
        wake-up). With ``block_s``, it ends after that long without a new event. A job
        with neither a record, a log nor a submit intent (never submitted, or expired)
        ends at once.
        """
        key = KEY_JOB_LOG + job_id
        cursor = after or "0-0"
        batch = self.read(job_id, after)
        idle_since = time.monotonic()
        while True:
            for event in batch:
                yield event
                if event.is_final:
                    return
                cursor = event.id
            if batch:
                idle_since = time.monotonic()
            elif self._over(job_id):
                # What was appended between the last read and the check (the final event
                # is written with the final status) is read before the end.
                yield from self._rest(job_id, cursor)
                return
            wait_ms = 1000
            if block_s is not None:
                left = block_s - (time.monotonic() - idle_since)
                if left <= 0:
                    return
                wait_ms = max(1, min(wait_ms, int(left * 1000)))
            rows: Any = self._redis.xread({key: cursor}, count=_BATCH, block=wait_ms)
            batch = [_event(i, f) for _, entries in rows or [] for i, f in entries]
