"""The one Celery app. Tiers register their tasks on it by name."""

from __future__ import annotations

from celery import Celery

from project.core import kombu_patches
from project.core import logs as _logs  # noqa: F401  (structured logging hooks)

kombu_patches.apply()

app = Celery("project", set_as_current=True)
app.config_from_object("project.core.celery_config")
