"""The one Celery app. Tiers register their tasks on it by name."""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import worker_init

from project.core import logs as _logs  # noqa: F401  (structured logging hooks)
from project.core.celery_app import flower as _flower  # noqa: F401  (Flower auth from settings)
from project.core.celery_app import kombu_patches
from project.core.runtime import init_runtime
from project.core.state.connections import share_write_refusals

kombu_patches.apply()

app = Celery("project", set_as_current=True)
app.config_from_object("project.core.celery_app.config")


def _resolve_identity(sender: Any, **_: Any) -> None:
    """Resolve which tiers a worker process serves and check its keys, before the pool forks.

    Every tier's agent bootstep asks this identity whether to include itself.
    """
    queues = sender.app.amqp.queues
    consumed = queues.consume_from if queues.consume_from else queues
    runtime = init_runtime(sender.hostname, sorted(consumed))
    # Refused writes are counted under this tier, in this process and its pool children.
    share_write_refusals(",".join(sorted(runtime.identity.tiers)) or "none")


worker_init.connect(_resolve_identity)
