"""Handlers loaded by test workers through AGENTS_HANDLER_MODULES."""

from __future__ import annotations

import os
import signal

from pydantic import BaseModel

from project.worker import handler


class PoisonPayload(BaseModel):
    """Nothing: the job kills whichever worker process runs it."""


@handler("poison", payload=PoisonPayload)
def poison(job: PoisonPayload) -> None:
    """Kill the pool process running it, as a segfaulting native library would."""
    os.kill(os.getpid(), signal.SIGKILL)
