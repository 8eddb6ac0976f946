"""Where ours spends its time: py-spy's collapsed stacks, summed into named costs.

``bench --profile DIR`` samples every agent process (main process and prefork
children) with ``py-spy record --gil --format raw``: only samples that hold the
GIL, so close to Python CPU time; waiting on a socket is not counted. Each
sample is put into the first category whose rule matches its stack (rules are
ordered, most specific first); the summary gives each category's share.

A hop (``take_in``, ``assign_job``, ``execute_work_order``, ``record_result``, each
timed by ``timed_hop``) is a plain function a task body calls inside Celery's
``trace_task``; a sample below one of those frames is put into a ``hop:`` category
by what runs under it, one in a prefork child elsewhere into a ``task:`` category
(Celery's own work), one in a main process into a ``main:`` category.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Rule:
    """A named cost: a sample belongs to it if its stack contains every ``needles``."""

    category: str
    needles: tuple[str, ...]
    children_only: bool = True
    """Only for samples in a prefork child (where tasks run), not the main process."""


HOP_FRAMES: tuple[str, ...] = (
    "take_in (project/coordinator/intake.py",
    "assign_job (project/distributor/dispatch.py",
    "execute_work_order (project/worker/execution.py",
    "record_result (project/distributor/dispatch.py",
    "timed_hop (project/core/hops.py",
)
"""A hop's own frame: each tier's hop function, and the context that times it, all run
by the task body inside Celery's ``trace_task``."""
HOP = "<below a hop's frame>"
"""A needle that every sample below a hop frame matches."""
OURS = "<the sampled frame is our code>"
"""A needle matched when the innermost frame is in ``project/``: our own Python."""

RULES: Sequence[Rule] = (
    # Below a hop function (take_in, assign_job, execute_work_order, record_result).
    Rule("hop: sign envelope", (HOP, "Signer.")),
    Rule("hop: verify envelope", (HOP, "verify (project/core/a2a/envelope")),
    Rule("hop: job record Lua (Redis)", (HOP, "JobStore.")),
    Rule("hop: registry reads (Redis)", (HOP, "AgentRegistry.")),
    Rule("hop: result backend store", (HOP, "publish_final_result")),
    Rule("hop: send next task (Celery publish)", (HOP, "send_task")),
    Rule("hop: handler", (HOP, "call_handler (project/worker/execution.py")),
    Rule("hop: pydantic models", (HOP, "pydantic")),
    Rule("hop: local state record", (HOP, "LocalAgentState")),
    Rule("hop: logging", (HOP, "logging/")),
    Rule("hop: metrics", (HOP, "prometheus_client")),
    Rule("hop: other Redis calls (redis-py)", (HOP, "redis/")),
    Rule("hop: our code", (HOP, OURS)),
    Rule("hop: other (stdlib, libraries)", (HOP,)),
    # A prefork child, outside the hops: Celery's own work per task.
    Rule("task: Ignore() traceback + pickling", ("handle_ignore",)),
    Rule("task: Ignore() traceback + pickling", ("ExceptionInfo.__init__",)),
    Rule("task: result to parent (billiard pickle)", ("ForkingPickler.dumps",)),
    Rule("task: callback publish (link)", ("_dispatch_callbacks_and_chain",)),
    Rule("task: logging", ("logging/",)),
    Rule("task: local state checkpoints", ("_StateTimer",)),
    Rule("task: Celery trace + IPC", ("billiard/",)),
    Rule("task: other", ()),
    # The main process: receiving, events, pool bookkeeping, heartbeats.
    Rule("main: task events (publish)", ("EventDispatcher",), children_only=False),
    Rule("main: agent heartbeat + hooks", ("Heartbeat.",), children_only=False),
    Rule("main: broker I/O + new Redis clients", ("kombu/transport/redis",), children_only=False),
    Rule("main: logging", ("logging/",), children_only=False),
    Rule("main: pool IPC", ("asynpool",), children_only=False),
    Rule("main: other", (), children_only=False),
)


def _frames_after_processes(stack: str) -> tuple[int, str]:
    frames = stack.split(";")
    depth = 0
    while depth < len(frames) and frames[depth].startswith("process "):
        depth += 1
    return depth, ";".join(frames[depth:])


def _below_hop(frames: str) -> str | None:
    """The frames from the innermost hop frame down, or None outside every hop."""
    start = max(frames.rfind(hop) for hop in HOP_FRAMES)
    return frames[start:] if start >= 0 else None


def _matches(rule: Rule, frames: str) -> bool:
    inner = _below_hop(frames)
    if inner is None:
        return HOP not in rule.needles and all(needle in frames for needle in rule.needles)
    # Only what runs below the hop counts: the frames above it are the same for all.
    for needle in rule.needles:
        if needle == HOP:
            continue
        if needle == OURS:
            if "(project/" not in inner.rsplit(";", 1)[-1]:
                return False
        elif needle not in inner:
            return False
    return True


def categorize(stack: str, rules: Sequence[Rule] = RULES) -> str:
    """The category of one collapsed stack (``process A;process B;frame;...``)."""
    depth, frames = _frames_after_processes(stack)
    in_child = depth >= 2
    for rule in rules:
        if rule.children_only == in_child and _matches(rule, frames):
            return rule.category
    return "unclassified"


def summarize(paths: Iterable[Path]) -> dict[str, dict[str, float]]:
    """Per process file and in total: each category's share of the samples, in percent.

    Returns ``{"<file stem>": {category: percent, ...}, ..., "all": {...}}``; the key
    ``"samples"`` of each holds the number of samples.
    """
    totals: Counter[str] = Counter()
    summary: dict[str, dict[str, float]] = {}
    for path in paths:
        counts: Counter[str] = Counter()
        for line in path.read_text().splitlines():
            stack, _, number = line.rpartition(" ")
            if not stack or not number.isdigit():
                continue
            counts[categorize(stack)] += int(number)
        totals.update(counts)
        summary[path.stem] = _shares(counts)
    summary["all"] = _shares(totals)
    return summary


def _shares(counts: Counter[str]) -> dict[str, float]:
    total = sum(counts.values())
    shares: dict[str, float] = {"samples": float(total)}
    for category, n in counts.most_common():
        shares[category] = round(100.0 * n / total, 1) if total else 0.0
    return shares
