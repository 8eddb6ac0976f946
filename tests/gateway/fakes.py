"""An in-memory job system for the gateway's unit tests: each submitted job runs a
scripted handler in the gateway's event loop and writes a job log as the tiers do."""

from __future__ import annotations

import asyncio
import itertools
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
    messages: list[dict[str, Any]] = field(default_factory=list)


class FakeJobs:
    """:class:`project.gateway.jobs.Jobs` in memory. Skills: echo, ask, slow, fail,
    reject, reply, progress, shaped, malformed, refused."""

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
        )
        self.jobs: dict[str, FakeJob] = {}
        self.refused: dict[str, dict[str, str]] = {}
        self.cancels: list[str] = []

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
        self.jobs[job_id] = FakeJob(task_type, payload, owner, a2a_message)
        if task_type == "refused":  # the coordinator refuses it before recording a job
            self.refused[job_id] = {"type": "InvalidJobError", "message": "payload too big"}
        else:
            asyncio.get_running_loop().create_task(self._run(job_id))

    async def resume(self, job_id: str, value: Any, *, a2a_message: dict[str, Any]) -> None:
        job = self.jobs.get(job_id)
        if job is None:
            raise JobNotFoundError(job_id)
        if job.status != "INPUT_REQUIRED" or job.answer is None:
            raise JobNotWaitingError(job_id)
        job.messages.append(a2a_message)
        job.answer.set_result(value)

    async def cancel(self, job_id: str) -> CancelResult:
        job = self.jobs.get(job_id)
        if job is None:
            raise JobNotFoundError(job_id)
        self.cancels.append(job_id)
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
