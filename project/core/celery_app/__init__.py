"""The Celery wiring: the one app, its configuration, the agents' bootsteps, kombu fixes.

Tiers register their tasks on :data:`app` by name and their bootstep with
:func:`~project.core.celery_app.bootsteps.register_agent_step`.
"""

from project.core.celery_app.app import app

__all__ = ["app"]
