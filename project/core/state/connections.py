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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from redis import Redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from redis.sentinel import Sentinel

from project.core.errors import ConfigurationError

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
    redis-py pools are fork-safe: a child process opens its own connections.
    """
    return client_from_url(
        url,
        socket_connect_timeout=5,
        socket_timeout=30,
        socket_keepalive=True,
        health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=20),
        retry_on_error=[RedisConnectionError, RedisTimeoutError, ConnectionResetError],
    )
