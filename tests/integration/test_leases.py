"""Leases and fencing tokens against a real redis-server, with a real paused holder."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys

import pytest
from conftest import redis_url
from redis import Redis
from support.polling import wait_for

from project.core.constants import KEY_LEASE
from project.core.errors import LeaseError
from project.core.state.leases import Lease, LeaseManager

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TTL_MS = 500

# A holder: take the lease, then keep writing under it until a write is refused.
_HOLDER = r"""
import json, sys, time
from project.core.errors import LeaseError
from project.core.state.leases import LeaseManager
from project.core.state.connections import connect_redis

url, name, ttl_ms = sys.argv[1], sys.argv[2], int(sys.argv[3])
leases = LeaseManager(connect_redis(url))
lease = leases.acquire(name, ttl_ms)
if lease is None:
    sys.exit("lease is taken")
print(json.dumps({"token": lease.fencing_token, "owner": lease.owner}), flush=True)
writes = 0
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    try:
        leases.guarded_hset(lease, "data:guarded", {"writer": "first", "n": str(writes)})
    except LeaseError as exc:
        print(json.dumps({"refused": str(exc), "writes": writes,
                          "renewed": leases.renew(lease, ttl_ms),
                          "released": leases.release(lease)}), flush=True)
        sys.exit(0)
    writes += 1
    time.sleep(0.01)
sys.exit("never refused")
"""


def read_line(proc: subprocess.Popen[str], timeout_s: float) -> str:
    """One line of a child's stdout, waiting at most ``timeout_s``."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    if not ready:
        raise AssertionError(f"no output from the holder within {timeout_s}s")
    return proc.stdout.readline()


def test_a_paused_holder_cannot_write_after_another_took_over(redis_client: Redis) -> None:
    leases = LeaseManager(redis_client)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, redis_url(15), "job-x", str(TTL_MS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = json.loads(read_line(holder, 60))
        wait_for(lambda: redis_client.exists("data:guarded") == 1, 10, "the holder's writes")

        os.kill(holder.pid, signal.SIGSTOP)
        wait_for(lambda: leases.holder("job-x") is None, 10, "the paused holder's lease to expire")
        second = leases.acquire("job-x", 30_000)
        assert second is not None, "the lease must be free once its TTL passed"
        assert second.fencing_token > first["token"]
        leases.guarded_hset(second, "data:guarded", {"writer": "second", "n": "0"})

        os.kill(holder.pid, signal.SIGCONT)
        outcome = json.loads(read_line(holder, 30))
        assert holder.wait(timeout=30) == 0
    finally:
        if holder.poll() is None:
            os.kill(holder.pid, signal.SIGCONT)
            holder.kill()
            holder.wait(timeout=10)
        for stream in (holder.stdout, holder.stderr):
            if stream is not None:
                stream.close()

    assert "stale" in outcome["refused"] and outcome["writes"] > 0
    assert outcome["renewed"] is False and outcome["released"] is False
    data = redis_client.hgetall("data:guarded")
    assert data == {"writer": "second", "n": "0", "_fence": str(second.fencing_token)}
    assert leases.holder("job-x") == second.owner


def test_wrong_owner_can_neither_renew_nor_release(redis_client: Redis) -> None:
    leases = LeaseManager(redis_client)
    lease = leases.acquire("beat", 10_000)
    assert lease is not None
    key = KEY_LEASE + "beat"
    impostor = Lease("beat", "not-the-owner", lease.fencing_token)
    ttl_before = int(redis_client.pttl(key))

    assert leases.renew(impostor, 60_000) is False
    assert leases.release(impostor) is False

    assert redis_client.get(key) == lease.owner
    ttl_after = int(redis_client.pttl(key))
    assert 0 < ttl_after <= ttl_before <= 10_000, "a wrong owner must not extend the TTL"
    # The owner itself can.
    assert leases.renew(lease, 60_000) is True
    assert int(redis_client.pttl(key)) > 10_000
    assert leases.release(lease) is True
    assert redis_client.exists(key) == 0


def test_a_held_lease_is_not_acquired_and_tokens_increase(redis_client: Redis) -> None:
    leases = LeaseManager(redis_client)
    first = leases.acquire("beat", 10_000)
    assert first is not None
    assert leases.acquire("beat", 10_000) is None
    assert leases.release(first)
    second = leases.acquire("beat", 10_000)
    assert second is not None and second.fencing_token == first.fencing_token + 1
    with pytest.raises(LeaseError, match="stale"):
        leases.guarded_hset(first, "data:x", {"writer": "first"})
    leases.guarded_hset(second, "data:x", {"writer": "second"})
    assert redis_client.hget("data:x", "writer") == "second"
