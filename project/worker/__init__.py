"""Worker tier: handlers and agents (task types), execution, heartbeats."""

from project.worker.agents import agent
from project.worker.context import JobContext, current_job
from project.worker.handlers import HANDLERS, Handler, RetryPolicy, handler

__all__ = ["HANDLERS", "Handler", "JobContext", "RetryPolicy", "agent", "current_job", "handler"]
