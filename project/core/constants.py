"""Every queue name, task name and Redis key prefix, in one place.

Queue and task names are contracts: deployment files and users depend on them.
"""

from __future__ import annotations

from typing import Final

# Queues (contract).
COORDINATOR_QUEUE: Final = "coordinator"
DISTRIBUTOR_QUEUE: Final = "distributor"
WORKER_QUEUE_PREFIX: Final = "worker."

# Celery task names (contract).
TASK_SUBMIT: Final = "project.coordinator.submit"
TASK_JOB_EVENT: Final = "project.coordinator.job_event"
TASK_HEALTH_CHECK: Final = "project.coordinator.health_check"
TASK_ASSIGN: Final = "project.distributor.assign"
TASK_COMPLETE: Final = "project.distributor.complete"
TASK_EXECUTE: Final = "project.worker.execute"

# Agent identities used as envelope sender / recipient.
COORDINATOR: Final = "coordinator"
DISTRIBUTOR: Final = "distributor"
APP: Final = "app"

# Redis keys. Everything this system writes lives under these prefixes.
KEY_JOB: Final = "job:"  # job:{id} -> hash (the job record)
KEY_JOB_CHAIN: Final = "job:chain:"  # job:chain:{id} -> list of causal links
KEY_JOBS_OPEN: Final = "jobs:open"  # zset job id -> updated_ms, unfinished jobs
KEY_JOBS_COUNT: Final = "jobs:count"  # hash status -> number of jobs that reached it
KEY_INTENTS: Final = "jobs:intents"  # zset job id -> ms, submitted but not yet recorded
KEY_INTENT: Final = "job:intent:"  # job:intent:{id} -> the submit call, until recorded
KEY_WORKER_JOBS: Final = "worker:jobs:"  # worker:jobs:{id} -> set of its unfinished job ids
KEY_AGENT_CARDS: Final = "agents:cards"  # hash agent id -> AgentCard json
KEY_AGENT_HEARTBEATS: Final = "agents:heartbeats"  # zset agent id -> last heartbeat ms
KEY_AGENT_DEAD: Final = "agents:dead"  # set of agent ids marked dead
KEY_SEEN: Final = "a2a:seen:"  # a2a:seen:{message id} -> "processing" | "done"
KEY_RR: Final = "routing:rr"  # round-robin counter
KEY_SHARED: Final = "shared:distributor:"  # shared:distributor:{id} -> SharedAgentState
KEY_LEASE: Final = "lease:"  # lease:{name} -> owner token
KEY_FENCE: Final = "fence:"  # fence:{name} -> fencing counter (INCR)
KEY_RUNNING: Final = "agents:running:"  # agents:running:{worker id} -> json job ids it runs
KEY_SNAPSHOT: Final = "snapshot:"  # snapshot:{agent id} -> LocalAgentState json
KEY_SHARED_STATS: Final = "stats:shared_state"  # hash: writes, conflicts of optimistic writes

# Pub/sub channels.
CHANNEL_JOBS: Final = "events:jobs"
CHANNEL_AGENTS: Final = "events:agents"
CHANNEL_SHARED: Final = "events:shared"  # a shared:distributor:{id} write
CHANNEL_SYNC: Final = "events:sync:"  # events:sync:{view id} -> one view's resync marker

PROTOCOL_VERSION: Final = "1.0"


def worker_queue(worker_id: str) -> str:
    """Return the private queue name of a worker (contract: ``worker.<id>``)."""
    return f"{WORKER_QUEUE_PREFIX}{worker_id}"
