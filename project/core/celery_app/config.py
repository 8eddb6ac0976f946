"""Celery configuration, built from :class:`~project.core.settings.Settings`.

Celery imports this module lazily, the first time the app's configuration is
read, so the environment is read at process start rather than at import of
``project``.
"""

from __future__ import annotations

from typing import Any

from kombu.entity import Exchange, Queue

from project.core.constants import (
    COORDINATOR_QUEUE,
    DISTRIBUTOR_QUEUE,
    TASK_ASSIGN,
    TASK_COMPLETE,
    TASK_HEALTH_CHECK,
    TASK_RESUME,
    TASK_SUBMIT,
    TIER_TASK_MODULES,
)
from project.core.models import PRIORITY_STEPS, Priority
from project.core.settings import Settings, get_settings
from project.core.state.connections import celery_urls

TRANSPORT_OPTIONS: dict[str, Any] = {
    "priority_steps": PRIORITY_STEPS,
    "sep": ":",
    "queue_order_strategy": "priority",
    "socket_keepalive": True,
    "health_check_interval": 15,
    "retry_on_timeout": True,
}
"""kombu's Redis transport options that every deployment shares (key names follow them)."""


def celery_config(settings: Settings) -> dict[str, Any]:
    """Return the Celery settings for a deployment."""
    url, sentinel_options = celery_urls(settings.redis_url)
    transport_options = {
        **sentinel_options,
        # One visibility timeout for broker and backend: longer than the longest job.
        "visibility_timeout": settings.visibility_timeout_s,
        **TRANSPORT_OPTIONS,
    }
    return {
        "broker_url": url,
        "result_backend": url,
        # JSON only, everywhere; pickle is refused.
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # At-least-once: ack after the task ran, requeue if its process died.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "broker_transport_options": transport_options,
        "result_backend_transport_options": {
            **sentinel_options,
            "visibility_timeout": settings.visibility_timeout_s,
        },
        "broker_connection_retry_on_startup": True,
        # Ride out a Redis restart while publishing (about a minute of retries).
        "task_publish_retry": True,
        "task_publish_retry_policy": {
            "max_retries": 40,
            "interval_start": 0.1,
            "interval_step": 0.5,
            "interval_max": 2.0,
        },
        "broker_connection_max_retries": None,
        "result_backend_always_retry": True,
        "result_backend_max_retries": 30,
        "redis_backend_health_check_interval": 15,
        "redis_retry_on_timeout": True,
        "redis_socket_keepalive": True,
        "result_expires": settings.result_ttl_s,
        "result_extended": False,
        # Flower sees every tier.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_default_queue": COORDINATOR_QUEUE,
        "task_default_priority": Priority.NORMAL.broker_priority,
        "task_create_missing_queues": True,
        "task_queues": [
            # Each tier queue on its own direct exchange: without one, Celery binds every
            # declared queue to the default exchange and a message published there would
            # reach both tiers.
            *(
                Queue(name, Exchange(name, type="direct"), routing_key=name)  # type: ignore[no-untyped-call]
                for name in (COORDINATOR_QUEUE, DISTRIBUTOR_QUEUE)
            ),
        ],
        # Every tier's tasks and bootstep, imported by worker processes at start (not
        # by ``import project``: an app that only submits loads none of them).
        "include": list(TIER_TASK_MODULES),
        "task_routes": {
            TASK_SUBMIT: {"queue": COORDINATOR_QUEUE},
            TASK_HEALTH_CHECK: {"queue": COORDINATOR_QUEUE},
            TASK_RESUME: {"queue": COORDINATOR_QUEUE},
            TASK_ASSIGN: {"queue": DISTRIBUTOR_QUEUE},
            TASK_COMPLETE: {"queue": DISTRIBUTOR_QUEUE},
            # project.worker.execute is always sent to one worker's own queue.
        },
        "beat_schedule": {
            "health-check": {
                "task": TASK_HEALTH_CHECK,
                "schedule": settings.health_check_interval_s,
                # Ahead of submits waiting in the coordinator's queue. No ``expires``: Celery
                # would compare beat's clock with the coordinator's, and a beat whose clock
                # runs behind would have every cycle discarded. Extra cycles are harmless:
                # each takes the interval's lease or does nothing.
                "options": {"priority": Priority.URGENT.broker_priority},
            },
        },
        "worker_hijack_root_logger": False,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
    }


globals().update(celery_config(get_settings()))
