"""Every queue name, task name and Redis key prefix, in one place.

Queue and task names are contracts: deployment files and users depend on them.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class Tier(StrEnum):
    """The three tiers; an agent's card names its tier, a process may serve several."""

    COORDINATOR = "coordinator"
    DISTRIBUTOR = "distributor"
    WORKER = "worker"


# Queues (contract).
COORDINATOR_QUEUE: Final = "coordinator"
DISTRIBUTOR_QUEUE: Final = "distributor"
WORKER_QUEUE_PREFIX: Final = "worker."

# Celery task names (contract).
TASK_SUBMIT: Final = "project.coordinator.submit"
TASK_HEALTH_CHECK: Final = "project.coordinator.health_check"
TASK_ASSIGN: Final = "project.distributor.assign"
TASK_COMPLETE: Final = "project.distributor.complete"
TASK_EXECUTE: Final = "project.worker.execute"
TASK_RESUME: Final = "project.coordinator.resume"

# Agent identities used as envelope sender / recipient (a tier's agents share one address).
COORDINATOR: Final = Tier.COORDINATOR.value
DISTRIBUTOR: Final = Tier.DISTRIBUTOR.value
APP: Final = "app"
GATEWAY: Final = "gateway"

# Redis keys. Everything this system writes lives under these prefixes.
KEY_JOB: Final = "job:"  # job:{id} -> hash (the job record, its causal chain in link:* fields)
KEY_JOBS_OPEN: Final = "jobs:open"  # zset job id -> updated_ms, unfinished jobs
KEY_JOBS_COUNT: Final = "jobs:count"  # hash status -> number of jobs that reached it
KEY_INTENTS: Final = "jobs:intents"  # hash job id -> {ms, call}: submitted, not yet recorded
KEY_JOBS_WAITING: Final = "jobs:waiting"  # zset job id -> input deadline ms (INPUT_REQUIRED)
KEY_JOBS_OWNER: Final = "jobs:owner:"  # jobs:owner:{owner} -> zset job id -> created_ms
KEY_JOB_LOG: Final = "joblog:"  # joblog:{id} -> stream, the job's ordered event log
KEY_GATEWAY_TASK: Final = "gateway:task:"  # gateway:task:{id} -> hash, an A2A task's record
KEY_GATEWAY_TASKS: Final = "gateway:tasks:"  # gateway:tasks:{owner} -> zset task id -> created
KEY_GATEWAY_WAKE: Final = "gateway:wake:"  # gateway:wake:{replica} -> stream, one entry: wake up
KEY_WORKER_JOBS: Final = "worker:jobs:"  # worker:jobs:{id} -> set of its unfinished job ids
KEY_AGENT_CARDS: Final = "agents:cards"  # hash agent id -> AgentCard json
KEY_AGENT_HEARTBEATS: Final = "agents:heartbeats"  # zset agent id -> last heartbeat ms
KEY_AGENT_DEAD: Final = "agents:dead"  # set of agent ids marked dead
KEY_AGENT_DEGRADED: Final = "agents:degraded"  # hash agent id -> {at_ms, error}: writes refused
KEY_RR: Final = "routing:rr"  # round-robin counter
KEY_SHARED: Final = "shared:distributor:"  # shared:distributor:{id} -> SharedAgentState
KEY_LEASE: Final = "lease:"  # lease:{name} -> owner token
KEY_FENCE: Final = "fence:"  # fence:{name} -> fencing counter (INCR)
KEY_RUNNING: Final = "agents:running:"  # agents:running:{worker id} -> json job ids it runs
KEY_SHARED_STATS: Final = "stats:shared_state"  # hash: writes, conflicts of optimistic writes
KEY_STATS_JOBS: Final = "stats:jobs"  # hash: re-routes, stale results, runs of each kind
KEY_STATS_HEALTH: Final = "stats:health"  # hash: health-check runs and what they did
KEY_STATS_REFUSED: Final = "stats:a2a:refused"  # hash reason -> envelopes refused

# Pub/sub channels.
CHANNEL_JOBS: Final = "events:jobs"
CHANNEL_AGENTS: Final = "events:agents"
CHANNEL_SHARED: Final = "events:shared"  # a shared:distributor:{id} write
CHANNEL_SYNC: Final = "events:sync:"  # events:sync:{view id} -> one view's resync marker

PROTOCOL_VERSION: Final = "1.0"

# The modules that register each tier's Celery tasks and agent bootstep.
TIER_TASK_MODULES: Final = (
    "project.coordinator.tasks",
    "project.distributor.tasks",
    "project.worker.tasks",
)


def execute_task_id(job_id: str, epoch: int) -> str:
    """The Celery task id of a job's work order at one epoch (``revoke`` finds it by this)."""
    return f"{job_id}.{epoch}"


def worker_queue(worker_id: str) -> str:
    """Return the private queue name of a worker (contract: ``worker.<id>``)."""
    return f"{WORKER_QUEUE_PREFIX}{worker_id}"


# --- LangGraph checkpoints (project.core.checkpoint) ---------------------------------------
# Plain Redis types only, so they work on redis-server 6.2 and 7. One thread (a job id,
# or agent:{id} for an agent's own state) owns exactly the six keys below. "{T}" is the
# thread id inside a Redis hash tag (all six share one cluster slot), "ns" the checkpoint
# namespace ("" for the root graph), "cid" a checkpoint id, "\0" a NUL byte. Namespaces,
# checkpoint ids and task ids never contain NUL, so every field splits uniquely.
KEY_CHECKPOINT: Final = "ckpt:"  # prefix of every checkpoint key
# ckpt:idx:{T} -> zset, all scores 0, members ns\0cid; lex order = checkpoint id order
KEY_CHECKPOINT_INDEX: Final = "ckpt:idx:"
# ckpt:cp:{T} -> hash ns\0cid -> msgpack [checkpoint type, bytes, metadata type, bytes, parent]
KEY_CHECKPOINT_DATA: Final = "ckpt:cp:"
# ckpt:ref:{T} -> hash ns\0cid -> msgpack array of the ckpt:blob fields that checkpoint reads
KEY_CHECKPOINT_REFS: Final = "ckpt:ref:"
# ckpt:blob:{T} -> hash ns\0version\0channel -> msgpack [type, bytes], one channel value
KEY_CHECKPOINT_BLOBS: Final = "ckpt:blob:"
# ckpt:wix:{T} -> zset, all scores 0, members ns\0cid\0task_id\0idx (pending writes, in order)
KEY_CHECKPOINT_WRITES_INDEX: Final = "ckpt:wix:"
# ckpt:wr:{T} -> hash ns\0cid\0task_id\0idx -> msgpack [channel, type, bytes, task_path]
KEY_CHECKPOINT_WRITES: Final = "ckpt:wr:"
# How many checkpoints RedisSaver keeps per thread and namespace unless told otherwise.
CHECKPOINT_KEEP_LAST: Final = 5


def checkpoint_keys(thread_id: str) -> tuple[str, str, str, str, str, str]:
    """Every Redis key a thread's checkpoints live in (index, data, refs, blobs, writes x2),
    in the order the checkpoint scripts take them."""
    tag = "{" + str(thread_id) + "}"
    return (
        KEY_CHECKPOINT_INDEX + tag,
        KEY_CHECKPOINT_DATA + tag,
        KEY_CHECKPOINT_REFS + tag,
        KEY_CHECKPOINT_BLOBS + tag,
        KEY_CHECKPOINT_WRITES_INDEX + tag,
        KEY_CHECKPOINT_WRITES + tag,
    )
