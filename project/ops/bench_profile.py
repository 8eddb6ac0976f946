"""Where ours spends its time: py-spy's collapsed stacks, summed into named costs.

``bench --profile DIR`` samples every agent process (main process and prefork
children) with ``py-spy record --gil --format raw``: only samples that hold the
GIL, so close to Python CPU time; waiting on a socket is not counted. Each
sample is put into the first category whose rule matches its stack (rules are
ordered, most specific first); the summary gives each category's share.
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


HOP = "run_hop (project/core/graph.py"
NODE = "<a frame of our node functions>"

RULES: Sequence[Rule] = (
    # Inside a hop graph (below project.core.graph.run_hop): what our nodes do.
    Rule("hop: sign envelope", (HOP, "Signer.sign")),
    Rule("hop: verify envelope", (HOP, "verify (project/core/envelope")),
    Rule("hop: replay claim/finish (Redis)", (HOP, "ReplayGuard.")),
    Rule("hop: job record Lua (Redis)", (HOP, "JobStore.")),
    Rule("hop: registry reads (Redis)", (HOP, "AgentRegistry.")),
    Rule("hop: result backend store", (HOP, "publish_final_result")),
    Rule("hop: send next task (Celery publish)", (HOP, "send_task")),
    Rule("hop: pydantic models", (HOP, "pydantic")),
    Rule("hop: local state record", (HOP, "LocalAgentState")),
    Rule("hop: logging", (HOP, "logging/")),
    Rule("hop: metrics", (HOP, "prometheus_client")),
    Rule("hop: handler", (HOP, "_run_handler")),
    Rule("hop: our node code", (HOP, NODE)),
    Rule("hop: LangGraph engine", (HOP,)),
    # A prefork child, outside the graph: Celery's own work per task.
    Rule("task: Ignore() traceback + pickling", ("handle_ignore",)),
    Rule("task: Ignore() traceback + pickling", ("ExceptionInfo.__init__",)),
    Rule("task: result to parent (billiard pickle)", ("ForkingPickler.dumps",)),
    Rule("task: callback publish (link)", ("_dispatch_callbacks_and_chain",)),
    Rule("task: logging", ("logging/",)),
    Rule("task: snapshot timer", ("_SnapshotTimer",)),
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


def _matches(rule: Rule, frames: str) -> bool:
    if HOP not in frames:
        return all(needle in frames for needle in rule.needles)
    # Only what runs below the hop counts: the frames above it are the same for all.
    inner = frames[frames.rindex(HOP) :]
    for needle in rule.needles:
        if needle == NODE:
            if "(project/" not in inner.replace("(project/core/graph.py", ""):
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
