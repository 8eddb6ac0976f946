"""Leases in Redis: ``SET NX PX`` with an owner token and a fencing token.

Acquire, renew and release are owner-checked (Lua). Every acquisition takes a
new fencing token from ``INCR``; a guarded write accepts a token only if it is
the newest one, so a holder paused past its TTL cannot write after another
holder took over.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from redis import Redis

from project.core.constants import KEY_FENCE, KEY_LEASE
from project.core.errors import LeaseError
from project.core.metrics import count_lease_failure
from project.core.state.lua import load_script


@dataclass(frozen=True, slots=True)
class Lease:
    """A held lease: its name, owner token and fencing token."""

    name: str
    owner: str
    fencing_token: int


class LeaseManager:
    """Acquires, renews and releases named leases in Redis."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._acquire = redis.register_script(load_script("lease_acquire"))
        self._renew = redis.register_script(load_script("lease_renew"))
        self._release = redis.register_script(load_script("lease_release"))
        self._guarded_hset = redis.register_script(load_script("lease_guarded_hset"))

    def acquire(self, name: str, ttl_ms: int, owner: str | None = None) -> Lease | None:
        """Take the lease if it is free; None if someone else holds it."""
        owner = owner or uuid.uuid4().hex
        token = int(self._acquire(keys=[KEY_LEASE + name, KEY_FENCE + name], args=[owner, ttl_ms]))
        if not token:
            count_lease_failure(name, "acquire")
            return None
        return Lease(name, owner, token)

    def renew(self, lease: Lease, ttl_ms: int) -> bool:
        """Extend a lease we still hold. False (and nothing changed) if we lost it."""
        renewed = bool(self._renew(keys=[KEY_LEASE + lease.name], args=[lease.owner, ttl_ms]))
        if not renewed:
            count_lease_failure(lease.name, "renew")
        return renewed

    def release(self, lease: Lease) -> bool:
        """Give a lease back. False (and nothing changed) if we no longer hold it."""
        released = bool(self._release(keys=[KEY_LEASE + lease.name], args=[lease.owner]))
        if not released:
            count_lease_failure(lease.name, "release")
        return released

    def holder(self, name: str) -> str | None:
        """The owner token currently holding ``name``, if any."""
        owner: str | None = self._redis.get(KEY_LEASE + name)  # type: ignore[assignment]
        return owner

    def guarded_hset(self, lease: Lease, key: str, mapping: dict[str, str]) -> None:
        """Write fields of hash ``key`` only if ``lease``'s fencing token is the newest.

        Raises:
            LeaseError: a newer holder took the lease (the token is stale).
        """
        args: list[str | int] = [lease.fencing_token]
        for field_name, value in mapping.items():
            args += [field_name, value]
        if not self._guarded_hset(keys=[key, KEY_FENCE + lease.name], args=args):
            count_lease_failure(lease.name, "fence")
            raise LeaseError(
                f"fencing token {lease.fencing_token} for lease {lease.name!r} is stale"
            )
