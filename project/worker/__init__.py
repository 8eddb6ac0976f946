"""Worker tier: handlers (task types), execution, heartbeats."""

from project.worker.handlers import HANDLERS, Handler, handler

__all__ = ["HANDLERS", "Handler", "handler"]
