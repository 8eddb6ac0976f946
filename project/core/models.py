"""Pydantic models shared by every tier: jobs, agent cards, agent state."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue


class Priority(StrEnum):
    """Job priority. On the Redis transport a lower number is served first."""

    URGENT = "urgent"
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @property
    def broker_priority(self) -> int:
        """The Celery/kombu priority number for this level (Redis: 0 is first)."""
        return _BROKER_PRIORITY[self]


_BROKER_PRIORITY = {Priority.URGENT: 0, Priority.HIGH: 3, Priority.NORMAL: 6, Priority.LOW: 9}
PRIORITY_STEPS = sorted(_BROKER_PRIORITY.values())


class JobStatus(StrEnum):
    """Where a job is. Within one epoch it only moves forward."""

    PENDING = "PENDING"
    ASSIGNED = "ASSIGNED"
    IN_PROGRESS = "IN_PROGRESS"
    INPUT_REQUIRED = "INPUT_REQUIRED"
    """An agent is waiting for a person (``interrupt``); ``resume_job`` continues it."""
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"
    ABANDONED = "ABANDONED"

    @property
    def is_final(self) -> bool:
        """True for COMPLETED, FAILED, CANCELED and ABANDONED."""
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset(
    {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.ABANDONED}
)


class Requirements(BaseModel):
    """What a worker must offer to take a job."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tags: list[str] = Field(default_factory=list)
    """Tags the worker must carry, all of them (e.g. ``["gpu"]``)."""
    worker_ids: list[str] = Field(default_factory=list)
    """If set, only these workers may take the job."""


class JobSpec(BaseModel):
    """A job as an app submits it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task_type: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")
    payload: dict[str, JsonValue]
    priority: Priority = Priority.NORMAL
    requirements: Requirements = Field(default_factory=Requirements)
    deadline_s: float | None = Field(default=None, gt=0)
    """How long the job may wait: for an eligible worker (default: the setting), and, if
    set, in a backlog (past it, a job whose messages expired in a queue fails with
    DeadlineExceededError instead of running)."""
    input_timeout_s: float | None = Field(default=None, gt=0)
    """How long an agent may wait for input (``input_required``) before it fails with
    InputTimeoutError; None waits until resumed or canceled."""
    a2a_message: dict[str, JsonValue] | None = None
    """The A2A message that started the job (the gateway sets it), in the spec's JSON form."""
    owner: str | None = Field(default=None, max_length=128)
    """Who submitted the job (a gateway caller); ``list_jobs`` finds a caller's jobs."""


class JobRecord(BaseModel):
    """The durable record of one job (Redis hash ``job:{id}``)."""

    model_config = ConfigDict(extra="ignore")

    id: str
    task_type: str
    status: JobStatus
    epoch: int = 0
    attempts: int = 0
    assignee: str = ""
    priority: Priority = Priority.NORMAL
    created_ms: int = 0
    updated_ms: int = 0
    deadline_ms: int = 0
    deadline_s: float | None = None
    """The deadline the submitter set, if any (``deadline_ms`` holds it as a time)."""
    payload: dict[str, JsonValue] = Field(default_factory=dict)
    requirements: Requirements = Field(default_factory=Requirements)
    result: JsonValue = None
    error: dict[str, str] | None = None
    finished_ms: int | None = None
    runs: int = 0
    """Starts of the job by workers (redeliveries included; poison jobs count these)."""
    retries: int = 0
    """Retries of a failed run by the task type's retry policy (not counted as runs)."""
    kind: str = ""
    """``handler`` or ``agent``, set by the worker that starts it."""
    interrupts: list[dict[str, JsonValue]] = Field(default_factory=list)
    """An INPUT_REQUIRED agent's pending interrupts: ``{"id": ..., "value": ...}``."""
    resume: dict[str, JsonValue] | None = None
    """The answer ``resume_job`` gave, by interrupt id, until the agent takes it."""
    input_timeout_s: float | None = None
    input_deadline_ms: int | None = None
    a2a_message: dict[str, JsonValue] | None = None
    owner: str | None = None


class Skill(BaseModel):
    """One thing an agent can do, shaped like an A2A AgentSkill."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    description: str = ""
    tags: list[str] = Field(default_factory=list)
    # Ours, beyond the A2A skill (the distributor reads them off the card it routes to):
    kind: str = "handler"
    """``handler`` or ``agent``."""
    time_limit_s: float | None = None
    """A run over this limit fails with JobTimeLimitError."""


TIME_LIMIT_GRACE_S = 10.0
"""After a task type's time limit, the run gets Celery's soft limit (a typed failure);
this much later, the hard limit (its pool process is killed, freeing the slot)."""


class AgentCard(BaseModel):
    """A worker's advertisement in the registry, readable as an A2A AgentCard."""

    model_config = ConfigDict(frozen=True)

    name: str
    description: str
    version: str
    url: str
    """Where to reach the agent: ``celery://<queue>``."""
    skills: list[Skill]
    default_input_modes: list[str] = Field(default_factory=lambda: ["application/json"])
    default_output_modes: list[str] = Field(default_factory=lambda: ["application/json"])
    capabilities: dict[str, bool] = Field(default_factory=lambda: {"streaming": False})
    # Fields of our own, beyond the A2A card:
    id: str
    tier: str
    queue: str
    concurrency: int = 1
    tags: list[str] = Field(default_factory=list)
    weight: int = 1
    hostname: str = ""
    pid: int = 0
    started_ms: int = 0

    @property
    def task_types(self) -> frozenset[str]:
        """The task types this agent runs (its skill ids)."""
        return frozenset(skill.id for skill in self.skills)


class AgentStatus(StrEnum):
    """Local status of one agent process."""

    IDLE = "IDLE"
    BUSY = "BUSY"
    ERROR = "ERROR"
    RECOVERING = "RECOVERING"


class Task(BaseModel):
    """A job as one agent sees it locally."""

    job_id: str
    task_type: str
    epoch: int
    status: JobStatus
    started_ms: int


class LocalAgentState(BaseModel):
    """The in-process state of one agent. Saved to Redis as a snapshot."""

    agent_id: str
    tier: str
    status: AgentStatus = AgentStatus.IDLE
    local_tasks: dict[str, Task] = Field(default_factory=dict)
    history: list[dict[str, Any]] = Field(default_factory=list)
    """The most recent events, newest last, bounded by ``history_limit``."""
    variables: dict[str, JsonValue] = Field(default_factory=dict)
    metadata: dict[str, JsonValue] = Field(default_factory=dict)
    history_limit: int = 100

    def record(self, event: dict[str, Any]) -> None:
        """Append an event to the bounded history."""
        self.history.append(event)
        if len(self.history) > self.history_limit:
            del self.history[: len(self.history) - self.history_limit]


class SharedAgentState(BaseModel):
    """State coordinator and distributor share at ``shared:distributor:{id}``."""

    distributor_id: str
    version: int = 0
    """Bumped by every write; optimistic writes compare it."""
    coordinator_version: int = 0
    """Bumped by every write the coordinator makes."""
    distributor_version: int = 0
    """Bumped by every write the distributor makes."""
    status: str = "active"
    assigned_workers: list[str] = Field(default_factory=list)
    task_summary: dict[str, int] = Field(default_factory=dict)
    lease_owner: str | None = None
    fencing_token: int = 0
    updated_ms: int = 0
