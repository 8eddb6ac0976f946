"""The Redis keys kombu's transport keeps, named by kombu itself.

Queues at each priority level, and the unacknowledged-message bookkeeping, are
kombu's keys; we read their names from kombu's Redis channel configured with our
transport options, so a kombu upgrade or an option change cannot leave a copy of
them stale here.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from kombu.transport.redis import Channel

from project.core.celery_app.config import TRANSPORT_OPTIONS


@dataclass(frozen=True)
class BrokerKeys:
    """Names of kombu's Redis keys under our transport options."""

    unacked: str
    """Hash delivery tag -> message of every delivered, unacknowledged message."""
    unacked_index: str
    """Zset delivery tag -> delivery time, of the same messages."""
    priority_steps: tuple[int, ...]
    """The broker priority levels, one Redis list each."""
    _channel: Any

    def priority_list(self, queue: str, priority: int) -> str:
        """The Redis list that holds ``queue``'s messages of broker ``priority``."""
        return str(self._channel._q_for_pri(queue, priority))

    def priority_lists(self, queue: str) -> list[str]:
        """Every Redis list of ``queue``, highest priority first (kombu's own order)."""
        return [self.priority_list(queue, step) for step in self.priority_steps]


@cache
def broker_keys() -> BrokerKeys:
    """kombu's key names for this deployment's transport options."""
    channel = Channel.__new__(Channel)  # no connection: only its naming is used
    for name, value in TRANSPORT_OPTIONS.items():
        if name in Channel.from_transport_options:
            setattr(channel, name, value)
    return BrokerKeys(
        unacked=channel.unacked_key,
        unacked_index=channel.unacked_index_key,
        priority_steps=tuple(channel.priority_steps),
        _channel=channel,
    )
