"""An in-memory job system for the gateway's unit tests: each submitted job runs a
scripted handler in the gateway's event loop and writes a job log as the tiers do."""

from __future__ import annotations

import asyncio
import itertools
import threading
from dataclasses import dataclass, field
from typing import Any

from project.core.errors import JobNotFoundError, JobNotWaitingError
from project.core.models import Skill
from project.gateway.jobs import CancelResult
from project.gateway.mapping import JobEvent

FINAL = ("COMPLETED", "FAILED", "CANCELED", "ABANDONED")
_ids = itertools.count(1)


def next_cursor() -> str:
    return f"{1_700_000_000_000 + next(_ids)}-0"


@dataclass
class FakeJob:
    task_type: str
    payload: dict[str, Any]
    owner: str
    a2a_message: dict[str, Any]
    log: list[JobEvent] = field(default_factory=list)
    status: str = "PENDING"
    answer: asyncio.Future[Any] | None = None
    answered: bool = False
    messages: list[dict[str, Any]] = field(default_factory=list)
    release: asyncio.Event | None = None


class FakeJobs:
    """:class:`project.gateway.jobs.Jobs` in memory. Skills: echo, ask, slow, fail,
    reject, reply, progress, shaped, malformed, refused, nan (a progress event holding
    NaN and infinities), badappend (an ``a2a`` answer appending to no artifact), late (not
    recorded until :meth:`record` says so, as with the coordinator down)."""

    def __init__(self, skills: tuple[str, ...] = ()) -> None:
        self.skills = skills or (
            "echo",
            "ask",
            "slow",
            "fail",
            "reject",
            "reply",
            "progress",
            "shaped",
            "malformed",
            "refused",
            "nan",
            "badappend",
            "late",
        )
        self.jobs: dict[str, FakeJob] = {}
        self.refused: dict[str, dict[str, str]] = {}
        self.cancels: list[str] = []
        self.unrecorded: dict[str, FakeJob] = {}
        self.failing_waits: set[str] = set()
        """Job ids whose next ``wait_log`` raises (a Redis hiccup)."""
        self.loop: asyncio.AbstractEventLoop | None = None
        self.refuse_cancels: set[str] = set()
        """Job ids whose cancel finds them ended first."""
        self._lock = threading.Lock()  # replicas in other threads answer too

    # -- the script side --------------------------------------------------------------

    def _log(self, job_id: str, kind: str, data: dict[str, Any]) -> None:
        job = self.jobs[job_id]
        if job.status in FINAL:
            return
        if kind == "status":
            job.status = str(data["status"])
        cursor = next_cursor()
        job.log.append(JobEvent(id=cursor, ms=int(cursor.split("-")[0]), kind=kind, data=data))

    async def _run(self, job_id: str) -> None:
        job = self.jobs[job_id]
        await asyncio.sleep(0.01)
        self._log(job_id, "status", {"status": "PENDING", "epoch": 0})
        self._log(job_id, "status", {"status": "ASSIGNED", "epoch": 1})
        self._log(job_id, "status", {"status": "IN_PROGRESS", "epoch": 1})
        kind = job.task_type
        if kind == "echo":
            self._finish(job_id, result={"result": job.payload.get("text", job.payload)})
        elif kind == "ask":
            loop = asyncio.get_running_loop()
            job.answer = loop.create_future()
            interrupts = [{"id": "i1", "value": "which colour?"}]
            self._log(
                job_id, "status", {"status": "INPUT_REQUIRED", "epoch": 1, "interrupts": interrupts}
            )
            value = await job.answer
            self._log(job_id, "status", {"status": "PENDING", "epoch": 1})
            self._log(job_id, "status", {"status": "IN_PROGRESS", "epoch": 2})
            self._finish(job_id, result={"result": f"you said {value}"})
        elif kind == "slow":
            await asyncio.sleep(float(job.payload.get("sleep_s", 60)))
            self._finish(job_id, result={"result": "slept"})
        elif kind == "fail":
            self._finish(job_id, error={"type": "HandlerError", "message": "boom"})
        elif kind == "reject":
            self._finish(job_id, error={"type": "JobRejectedError", "message": "not today"})
        elif kind == "reply":
            self._finish(job_id, result={"a2a": {"message": "a direct reply"}})
        elif kind == "progress":
            for step in range(3):
                self._log(job_id, "custom", {"text": f"step {step}", "step": step})
                await asyncio.sleep(0.05)
            if job.release is not None:
                await job.release.wait()
            self._finish(job_id, result={"steps": 3})
        elif kind == "shaped":
            self._finish(
                job_id,
                result={
                    "a2a": {
                        "artifacts": [
                            {"name": "doc", "parts": ["hello", {"data": {"n": 1}}]},
                            {
                                "parts": [
                                    {"url": "https://example.com/x.txt", "mediaType": "text/plain"}
                                ]
                            },
                            {"parts": [{"raw": "dGNr", "filename": "x.bin"}]},
                        ],
                        "status_message": "done",
                    }
                },
            )
        elif kind == "malformed":
            self._finish(job_id, result={"a2a": {"artifacts": [{"parts": []}]}})
        elif kind == "nan":
            self._log(job_id, "custom", {"text": "odd numbers", "ratio": float("nan")})
            self._finish(job_id, result={"high": float("inf"), "low": float("-inf")})
        elif kind == "badappend":
            artifact = {"artifactId": "a1", "parts": ["x"], "append": True}
            self._finish(job_id, result={"a2a": {"artifacts": [artifact]}})
        elif kind == "late":
            await asyncio.sleep(float(job.payload.get("sleep_s", 0.3)))
            self._finish(job_id, result={"result": "late"})

    def _finish(
        self, job_id: str, *, result: Any = None, error: dict[str, str] | None = None
    ) -> None:
        status = "FAILED" if error else "COMPLETED"
        self._log(job_id, "status", {"status": status, "result": result, "error": error})

    # -- the Jobs protocol --------------------------------------------------------------

    async def offered_skills(self) -> list[Skill]:
        return [
            Skill(id=s, name=s.title(), description=f"the {s} skill", tags=["test"])
            for s in self.skills
        ]

    async def submit(
        self,
        job_id: str,
        task_type: str,
        payload: dict[str, Any],
        *,
        a2a_message: dict[str, Any],
        owner: str,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        job = FakeJob(task_type, payload, owner, a2a_message)
        if payload.get("hold"):  # it finishes only when the test says so (release)
            job.release = asyncio.Event()
        if payload.get("hiccup"):  # the gateway's first wait on its log fails
            self.failing_waits.add(job_id)
        if task_type == "late":  # on its way to a coordinator that is not there
            self.unrecorded[job_id] = job
            return
        self.jobs[job_id] = job
        if task_type == "refused":  # the coordinator refuses it before recording a job
            self.refused[job_id] = {"type": "InvalidJobError", "message": "payload too big"}
        else:
            asyncio.get_running_loop().create_task(self._run(job_id))

    # -- the test side (from the test's thread) ---------------------------------------

    def _in_loop(self, fn: Any, *args: Any) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(fn, *args)

    def record(self, job_id: str) -> None:
        """The coordinator takes a ``late`` job in at last: it runs."""

        def take() -> None:
            self.jobs[job_id] = self.unrecorded.pop(job_id)
            asyncio.get_running_loop().create_task(self._run(job_id))

        self._in_loop(take)

    def release(self, job_id: str) -> None:
        """Let a ``progress`` job sent with ``{"hold": true}`` finish."""

        def go() -> None:
            release = self.jobs[job_id].release
            assert release is not None, f"{job_id} is not held"
            release.set()

        self._in_loop(go)

    def answer_elsewhere(self, job_id: str, value: Any) -> None:
        """Answer a waiting job as another replica would (not through this gateway)."""
        self._answer(job_id, value)

    def _answer(self, job_id: str, value: Any) -> None:
        job = self.jobs.get(job_id)
        if job is None:
            raise JobNotFoundError(job_id)
        with self._lock:
            if job.status != "INPUT_REQUIRED" or job.answer is None or job.answered:
                raise JobNotWaitingError(job_id)
            job.answered = True
        job.answer.get_loop().call_soon_threadsafe(job.answer.set_result, value)

    async def resume(self, job_id: str, value: Any, *, a2a_message: dict[str, Any]) -> None:
        self._answer(job_id, value)
        self.jobs[job_id].messages.append(a2a_message)

    async def cancel(self, job_id: str) -> CancelResult:
        job = self.jobs.get(job_id)
        if job is None:
            raise JobNotFoundError(job_id)
        self.cancels.append(job_id)
        if job_id in self.refuse_cancels:  # it ended just before
            return CancelResult(False, "COMPLETED")
        if job.status in FINAL:
            return CancelResult(False, job.status)
        self._log(
            job_id,
            "status",
            {"status": "CANCELED", "error": {"type": "JobCanceledError", "message": "canceled"}},
        )
        return CancelResult(True, "CANCELED")

    async def read_log(self, job_id: str, after: str | None) -> list[JobEvent]:
        job = self.jobs.get(job_id)
        if job is None:
            return []
        if after is None:
            return list(job.log)
        ids = [e.id for e in job.log]
        return job.log[ids.index(after) + 1 :] if after in ids else []

    async def wait_log(self, job_id: str, after: str | None, timeout_s: float) -> list[JobEvent]:
        if job_id in self.failing_waits:
            self.failing_waits.discard(job_id)
            raise ConnectionError("Redis went away for a moment")
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            events = await self.read_log(job_id, after)
            if events or asyncio.get_running_loop().time() >= deadline:
                return events
            await asyncio.sleep(0.01)

    async def intake_refusal(self, job_id: str) -> dict[str, str] | None:
        return self.refused.get(job_id)

    async def ping(self) -> bool:
        return True
