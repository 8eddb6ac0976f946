"""Replay protection for A2A envelopes, kept in Redis.

The rule, which every tier follows:

* Before acting on an envelope, a task **claims** its id. A claim fails only if
  the id is marked ``done``; an id with no marker (never seen, or seen but not
  finished) is accepted. A claim is one ``GET``: it writes nothing.
* An envelope is marked ``done`` only once *every* effect of processing it is
  durably recorded (for a worker's REQUEST that is the moment the distributor
  records the job's result, in the same Lua script).
* So a genuine Celery redelivery of a message whose processing did not finish
  (its worker died mid-way; Celery redelivers the same body) is accepted and
  runs again, while a replay of a finished message is refused with
  :class:`~project.core.errors.ReplayError`.
* Markers live until the envelope expires (plus a margin for clock skew);
  after that the expiry check refuses the envelope anyway.

Two copies of one unfinished message may both be accepted; the job's epoch and
compare-and-set transitions make sure only one result is ever recorded.
"""

from __future__ import annotations

from redis import Redis

from project.core.a2a.envelope import Envelope, now_ms
from project.core.constants import KEY_SEEN
from project.core.errors import ReplayError

CLOCK_SKEW_MS = 60_000
DONE = "done"


def marker_ttl_ms(envelope: Envelope) -> int:
    """How long a replay marker must live: until the envelope expires, plus skew."""
    return max(1_000, envelope.expires_at_ms - now_ms() + CLOCK_SKEW_MS)


def seen_key(message_id: str) -> str:
    """Redis key of one envelope's replay marker."""
    return f"{KEY_SEEN}{message_id}"


class ReplayGuard:
    """Claims and finishes envelope ids in Redis (see the module docstring)."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    def claim(self, envelope: Envelope) -> None:
        """Accept an envelope for processing, or refuse a replay of a finished one.

        Raises:
            ReplayError: the envelope was already processed to the end.
        """
        if self._redis.get(seen_key(envelope.id)) == DONE:
            raise ReplayError(f"envelope {envelope.id} was already processed")

    def finish(self, envelope: Envelope) -> None:
        """Mark an envelope done: from now on a copy of it is a replay."""
        self._redis.set(seen_key(envelope.id), DONE, px=marker_ttl_ms(envelope))
