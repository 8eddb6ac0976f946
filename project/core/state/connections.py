"""Redis connections for the shared-state store, resilient to a Redis restart or failover.

``AGENTS_REDIS_URL`` is either a plain ``redis://`` / ``rediss://`` URL or a
Sentinel URL: one ``sentinel://`` address per Sentinel, separated by ``;``, the
Redis password (if any) and the database on the first, and the monitored
master's name as ``?master_name=`` (and the Sentinels' own password, if they
have one, as ``&sentinel_password=``)::

    sentinel://:secret@s1:26379/0;sentinel://s2:26379;sentinel://s3:26379?master_name=agents

:func:`connect_redis` and :func:`client_from_url` resolve the current master
through the Sentinels on every new connection, so a failover is followed;
:func:`celery_urls` gives Celery the same URL in its own form (``master_name`` as
a transport option, as kombu and Celery's Sentinel backend expect).

**Redis refusing writes.** A Redis at ``maxmemory`` with ``noeviction`` refuses
every write that could grow it (and every ``MULTI``), a replica refuses writes
(``READONLY``), and so does a Redis that cannot persist (``MISCONF``). Reads,
deletes, ``BRPOP`` and ``PUBLISH`` still work. :func:`write_refusal` recognises
such an error wherever it surfaces. Agents ride them out: where this process rides
them out (:func:`ride_out_writes`: the prefork pool children, where tasks
run), a refused write waits with backoff and is tried again, in place, until
Redis takes it (:func:`ride_out`, and :class:`RideOutRetry` in every client of
ours and of kombu); elsewhere it fails fast and its caller decides. Each refusal
is counted (``agents_redis_write_errors_total``), logged (once per episode, then
every :data:`REFUSAL_LOG_EVERY_S`) and remembered (:func:`last_write_refusal_age_s`,
shared with pool children) so the agent's heartbeat can show it degraded.
"""

from __future__ import annotations

import logging
import multiprocessing
import random
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, TypeVar
from urllib.parse import parse_qs, quote, unquote, urlsplit

from redis import Redis
from redis.backoff import AbstractBackoff, ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from redis.sentinel import Sentinel

from project.core import metrics
from project.core.errors import ConfigurationError

log = logging.getLogger("project.redis")

T = TypeVar("T")

SENTINEL_SCHEME = "sentinel://"


@dataclass(frozen=True)
class SentinelTarget:
    """A parsed Sentinel URL."""

    sentinels: tuple[tuple[str, int], ...]
    """(host, port) of each Sentinel."""
    master_name: str
    """The name the Sentinels monitor the master under."""
    db: int = 0
    """Database number on the master."""
    password: str | None = None
    """The master's password (the Sentinels' own, if any, is the same)."""
    username: str | None = None
    """The master's ACL user, if any."""
    sentinel_password: str | None = None
    """The Sentinels' own password, if they have one."""


def is_sentinel_url(url: str) -> bool:
    """True for a ``sentinel://`` URL."""
    return url.strip().lower().startswith(SENTINEL_SCHEME)


def parse_sentinel_url(url: str) -> SentinelTarget:
    """Parse a Sentinel URL (see the module docstring).

    Raises:
        ConfigurationError: not a Sentinel URL, no address, a bad port, or no master name.
    """
    chunks = [c.strip() for c in url.split(";") if c.strip()]
    if not chunks or not all(is_sentinel_url(c) for c in chunks):
        raise ConfigurationError(
            "a Sentinel URL is one or more sentinel://host:port, separated by ';'"
        )
    sentinels: list[tuple[str, int]] = []
    master_name, db, password, username, sentinel_password = "", 0, None, None, None
    for chunk in chunks:
        parts = urlsplit(chunk)
        try:
            port = parts.port or 26379
        except ValueError:
            raise ConfigurationError(f"bad Sentinel port in {parts.hostname!r}") from None
        if not parts.hostname:
            raise ConfigurationError("a Sentinel address has no host")
        sentinels.append((parts.hostname, port))
        if parts.password and password is None:
            password = unquote(parts.password)
            username = unquote(parts.username) if parts.username else None
        path = parts.path.strip("/")
        if path:
            if not path.isdigit():
                raise ConfigurationError(f"bad database number {path!r} in the Sentinel URL")
            db = int(path)
        query = parse_qs(parts.query)
        if query.get("master_name"):
            master_name = query["master_name"][-1]
        if query.get("sentinel_password"):
            sentinel_password = query["sentinel_password"][-1]
    if not master_name:
        raise ConfigurationError("a Sentinel URL needs ?master_name=<name> (the monitored master)")
    return SentinelTarget(tuple(sentinels), master_name, db, password, username, sentinel_password)


def celery_urls(url: str) -> tuple[str, dict[str, Any]]:
    """The broker/backend URL in Celery's form, and the transport options it needs.

    A plain URL is returned as it is. For a Sentinel URL, Celery gets each
    Sentinel address with the password and database (its own format) and
    ``master_name`` as a transport option for the broker and the backend.
    """
    if not is_sentinel_url(url):
        return url, {}
    target = parse_sentinel_url(url)
    auth = ""
    if target.password:
        auth = f"{quote(target.username or '', safe='')}:{quote(target.password, safe='')}@"
    chunks = [f"sentinel://{auth}{host}:{port}/{target.db}" for host, port in target.sentinels]
    options: dict[str, Any] = {"master_name": target.master_name}
    if target.sentinel_password:
        options["sentinel_kwargs"] = {"password": target.sentinel_password}
    return ";".join(chunks), options


def client_from_url(url: str, **options: Any) -> Redis:
    """A ``decode_responses`` client for a plain or Sentinel URL; ``options`` go to redis-py."""
    options.setdefault("decode_responses", True)
    if not is_sentinel_url(url):
        return Redis.from_url(url, **options)
    target = parse_sentinel_url(url)
    sentinel_options = {
        k: options[k] for k in ("socket_connect_timeout", "socket_timeout") if k in options
    }
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(target.sentinels),
        sentinel_kwargs={"password": target.sentinel_password, **sentinel_options},
        **sentinel_options,
    )
    client: Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        target.master_name,
        db=target.db,
        password=target.password,
        username=target.username,
        **options,
    )
    return client


def connect_redis(url: str) -> Redis:
    """Return a client that retries through a short Redis outage (restart, failover).

    Commands retry with exponential backoff for about 30 s before the error surfaces.
    A write Redis refuses (full, read-only) is waited out where this process rides
    write refusals out (:func:`ride_out_writes`), and fails fast elsewhere.
    redis-py pools are fork-safe: a child process opens its own connections.
    """
    return client_from_url(
        url,
        socket_connect_timeout=5,
        socket_timeout=30,
        socket_keepalive=True,
        health_check_interval=15,
        retry=RideOutRetry(ExponentialBackoff(cap=2.0, base=0.05), retries=20),
        retry_on_error=[RedisConnectionError, RedisTimeoutError, ConnectionResetError],
    )


# --- Redis refusing writes ----------------------------------------------------------


class WriteOp(StrEnum):
    """What a refused write was for (the ``op`` label of the write-error metric)."""

    STATE = "state"
    """The shared-state store: job records, registry, leases, checkpoints."""
    BROKER = "broker"
    """Publishing a message (a task's next hop, its callback, a retry)."""
    RESULT = "result"
    """Storing a job's final result in the Celery result backend."""
    RECEIVE = "receive"
    """kombu's copy of a message it hands to the worker (its ``unacked`` hash)."""
    ACK = "ack"
    """kombu's acknowledgement of a message (dropping that copy)."""
    RESTORE = "restore"
    """kombu's putting an unacknowledged message back in its queue."""
    HEARTBEAT = "heartbeat"
    """The agent's heartbeat found Redis refusing writes (its probe)."""
    TIMER = "timer"
    """A periodic write of an agent: local-state checkpoints, heartbeat hooks."""


_REFUSALS: Final = (
    ("OOM command not allowed", "Redis is out of memory (used memory > maxmemory)"),
    ("command not allowed when used memory", "Redis is out of memory (used memory > maxmemory)"),
    ("READONLY", "Redis is a read-only replica"),
    ("MISCONF", "Redis cannot persist to disk (MISCONF)"),
    ("NOREPLICAS", "Redis has too few replicas to accept writes (NOREPLICAS)"),
)


def write_refusal(error: BaseException | str | None) -> str | None:
    """Why Redis refused a write, if ``error`` (or an error it wraps) is such a refusal.

    Recognises redis-py's ``OutOfMemoryError`` and ``ReadOnlyError``, and the same
    refusals as text: inside a Lua script on Redis 6.2, wrapped by kombu
    (``OperationalError``), or as a string a script returned. None for anything else.
    """
    seen: set[int] = set()
    current: BaseException | str | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OutOfMemoryError):
            return _REFUSALS[0][1]
        if isinstance(current, ReadOnlyError):
            return _REFUSALS[2][1]
        if isinstance(current, str | ResponseError):
            text = str(current)
            for marker, meaning in _REFUSALS:
                if marker in text:
                    return meaning
        if isinstance(current, str):
            return None
        current = current.__cause__ or current.__context__
    return None


def is_write_refused(error: BaseException | str | None) -> bool:
    """True if ``error`` is Redis refusing a write (see :func:`write_refusal`)."""
    return write_refusal(error) is not None


@dataclass(frozen=True)
class WriteRetryPolicy:
    """How a refused write is waited out: exponential backoff with jitter, no limit."""

    first_delay_s: float = 0.05
    """The wait after the first refusal (about; jitter takes up to half of it off)."""
    max_delay_s: float = 2.0
    """The longest wait between two tries: once Redis takes writes again, a waiting
    write goes through within this long."""

    def delay_s(self, attempt: int) -> float:
        """The wait after the ``attempt``-th refusal in a row (1-based)."""
        ceiling = min(self.max_delay_s, self.first_delay_s * 2.0 ** min(attempt - 1, 30))
        return ceiling / 2 + random.uniform(0, ceiling / 2)


WRITE_RETRY: Final = WriteRetryPolicy()
REFUSAL_LOG_EVERY_S: Final = 30.0
"""While Redis keeps refusing writes, a process logs it at most this often."""


class _WriteRefusals:
    """This process's record of refused writes: count, log, remember when.

    The time of the last refusal lives in memory shared with the prefork pool
    children (:meth:`share`, before they fork), so the main process's heartbeat
    knows about refusals its children rode out.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tier = "client"
        self._shared: Any = None  # multiprocessing.RawArray('d', 1): last refusal, monotonic
        self._last = 0.0
        self._logged_at = float("-inf")
        self._unlogged = 0

    def share(self, tier: str) -> None:
        """Name this process's tier and share the record with pool children forked later."""
        self._tier = tier
        if self._shared is None:
            self._shared = multiprocessing.RawArray("d", 1)

    def note(self, op: WriteOp, error: BaseException | str) -> None:
        """Count, remember and (now and then) log one refused write. Never raises."""
        now = time.monotonic()
        try:
            metrics.count_write_error(self._tier, op.value)
        except Exception:  # counting must not break riding it out
            log.debug("could not count a refused write", exc_info=True)
        with self._lock:
            self._last = now
            if self._shared is not None:
                self._shared[0] = now
            quiet = now - self._logged_at < REFUSAL_LOG_EVERY_S
            if quiet:
                self._unlogged += 1
            else:
                self._logged_at, unlogged, self._unlogged = now, self._unlogged, 0
        if quiet:
            log.debug("Redis refused a write (%s): %s", op.value, error)
            return
        log.warning(
            "Redis refuses writes: %s. This agent waits and retries (backoff); jobs resume "
            "once Redis takes writes again (raise maxmemory or free memory)",
            write_refusal(error) or error,
            extra={"op": op.value, "error": str(error), "refused_since_last_log": unlogged},
        )

    def last_age_s(self) -> float | None:
        """Seconds since this process (or a pool child of it) last had a write refused."""
        with self._lock:
            last = self._last
            if self._shared is not None:
                last = max(last, float(self._shared[0]))
        return None if last <= 0 else max(0.0, time.monotonic() - last)


_refusals = _WriteRefusals()
_ride_out_default = False
_ride_out_here = threading.local()


def share_write_refusals(tier: str) -> None:
    """In an agent's main process, before the pool forks: label and share the record."""
    _refusals.share(tier)


def note_write_refusal(op: WriteOp, error: BaseException | str) -> None:
    """Count, remember and log one write Redis refused (see :class:`WriteOp`)."""
    _refusals.note(op, error)


def last_write_refusal_age_s() -> float | None:
    """Seconds since a write of this agent process (or its pool children) was refused."""
    return _refusals.last_age_s()


def ride_out_writes(enabled: bool | None, *, this_thread: bool = False) -> None:
    """Whether refused writes are waited out here: in the whole process, or this thread.

    A thread's own choice wins over the process's; None drops the thread's choice.
    Pool children of agents ride them out (their tasks then finish once Redis takes
    writes, holding on to their messages); main processes and timer threads fail
    fast and back off themselves.
    """
    global _ride_out_default
    if this_thread:
        if enabled is None:
            _ride_out_here.__dict__.pop("enabled", None)
        else:
            _ride_out_here.enabled = enabled
    else:
        _ride_out_default = bool(enabled)


def rides_out_writes() -> bool:
    """True if a refused write is waited out on this thread (see :func:`ride_out_writes`)."""
    enabled: bool = getattr(_ride_out_here, "enabled", _ride_out_default)
    return enabled


def ride_out(
    operation: Callable[[], T], *, op: WriteOp, policy: WriteRetryPolicy = WRITE_RETRY
) -> T:
    """Run ``operation``; while Redis refuses its writes, wait and run it again.

    Only a refused write is retried, and only after it changed nothing (a refused
    command, ``MULTI`` or script has no effect), so running it again is safe. Any
    other error is raised as it is. There is no limit: the caller's message stays
    unacknowledged meanwhile, and goes on once Redis takes writes again.
    """
    refused, started = 0, time.monotonic()
    while True:
        try:
            result = operation()
        except Exception as error:
            if not is_write_refused(error):
                raise
            refused += 1
            note_write_refusal(op, error)
            time.sleep(policy.delay_s(refused))
            continue
        if refused:
            log.info(
                "Redis takes writes again: a %s write went through after %d refusals in %.1f s",
                op.value,
                refused,
                time.monotonic() - started,
                extra={"op": op.value, "refused": refused},
            )
        return result


def _certificate_refused(error: BaseException) -> bool:
    """True if ``error`` (or what it was raised from) is a failed certificate check."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class RideOutRetry(Retry):
    """redis-py's retry, which also waits out refused writes where they are ridden out.

    Connection errors are retried as redis-py's :class:`~redis.retry.Retry` does, except
    a server certificate that fails verification (a wrong CA or host name is not an
    outage: it is raised at once); a write Redis refuses is handed to :func:`ride_out`
    when the calling thread rides refusals out (:func:`rides_out_writes`), and raised at
    once otherwise.
    """

    def __init__(
        self,
        backoff: AbstractBackoff,
        retries: int,
        supported_errors: tuple[type[Exception], ...] = (
            RedisConnectionError,
            RedisTimeoutError,
            TimeoutError,
        ),
        *,
        op: WriteOp = WriteOp.STATE,
    ) -> None:
        super().__init__(backoff, retries, supported_errors)
        self.op = op

    def call_with_retry(
        self,
        do: Any,
        fail: Any,
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> Any:
        """Run ``do`` as redis-py does, waiting out refused writes if this thread rides them out."""

        def retryable(error: Exception) -> bool:
            if _certificate_refused(error):
                return False
            return is_retryable is None or is_retryable(error)

        def attempt() -> Any:
            return Retry.call_with_retry(self, do, fail, retryable, with_failure_count)

        if not rides_out_writes():
            return attempt()
        return ride_out(attempt, op=self.op)
