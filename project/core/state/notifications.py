"""Listening to the state-change announcements on Redis pub/sub.

Job transitions are published on ``events:jobs`` by the job store's scripts,
agent changes on ``events:agents`` by the registry, shared-state writes on
``events:shared``; every message is a JSON object. A :class:`Subscriber` feeds
them to a callback from a thread of its own.

Pub/sub is fire-and-forget: messages published while a subscriber is
disconnected are lost. So the subscriber reconnects on its own (a Redis restart
is ridden out) and calls ``on_subscribed`` after every (re)subscription, where a
listener re-reads the state it follows before applying further messages.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from redis import Redis
from redis.backoff import NoBackoff
from redis.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from project.core.state.connections import client_from_url

log = logging.getLogger("project.notifications")

MessageHandler = Callable[[str, dict[str, Any]], None]
"""Called with the channel and the decoded JSON object of each message."""


class Subscriber:
    """Subscribes to channels on a daemon thread and hands each message to a callback.

    Args:
        url: Redis URL (the subscriber opens a connection of its own).
        channels: channels to subscribe to.
        on_message: called for every JSON-object message, on the subscriber's thread.
        on_subscribed: called on the subscriber's thread once every channel is
            subscribed, after the first subscription and after every reconnection,
            before any message that follows is handed on.
        poll_s: longest wait for one message; bounds how long ``stop`` takes.
        reconnect_cap_s: longest pause between reconnection attempts.
        name: thread name.
    """

    def __init__(
        self,
        url: str,
        channels: Sequence[str],
        on_message: MessageHandler,
        *,
        on_subscribed: Callable[[], None] | None = None,
        poll_s: float = 0.5,
        reconnect_cap_s: float = 2.0,
        name: str = "subscriber",
    ) -> None:
        if not channels:
            raise ValueError("a subscriber needs at least one channel")
        self._url = url
        self._channels = list(dict.fromkeys(channels))
        self._on_message = on_message
        self._on_subscribed = on_subscribed
        self._poll_s = poll_s
        self._reconnect_cap_s = reconnect_cap_s
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.reconnects = 0
        """How many times the connection was lost and re-established."""

    def start(self) -> Subscriber:
        """Start listening."""
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop listening and wait (at most ``timeout_s``) for the thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout_s)

    @property
    def subscribed(self) -> bool:
        """True while subscribed to every channel."""
        return self._subscribed.is_set()

    def wait_subscribed(self, timeout_s: float) -> bool:
        """Wait until subscribed (and ``on_subscribed`` ran); False on timeout."""
        return self._subscribed.wait(timeout_s)

    def _connect(self) -> tuple[Redis, PubSub]:
        # No transparent retry: a reconnect must be seen here so that on_subscribed runs.
        client = client_from_url(
            self._url,
            socket_connect_timeout=2,
            socket_timeout=10,
            socket_keepalive=True,
            health_check_interval=5,
            retry=Retry(NoBackoff(), 0),
        )
        pubsub = client.pubsub()  # type: ignore[no-untyped-call]
        pubsub.subscribe(*self._channels)
        pending = set(self._channels)
        while pending and not self._stop.is_set():
            reply = pubsub.get_message(timeout=self._poll_s)
            if reply is not None and reply["type"] == "subscribe":
                pending.discard(reply["channel"])
        return client, pubsub

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            client: Redis | None = None
            pubsub: PubSub | None = None
            try:
                client, pubsub = self._connect()
                if self._stop.is_set():
                    break
                if self._on_subscribed is not None:
                    self._on_subscribed()
                if failures:
                    self.reconnects += 1
                    log.info("subscriber reconnected", extra={"channels": self._channels})
                failures = 0
                self._subscribed.set()
                while not self._stop.is_set():
                    reply = pubsub.get_message(timeout=self._poll_s)
                    if reply is not None and reply["type"] == "message":
                        self._deliver(reply["channel"], reply["data"])
            except (RedisConnectionError, RedisTimeoutError, OSError):
                self._subscribed.clear()
                failures += 1
                log.warning(
                    "subscriber lost its connection; reconnecting",
                    exc_info=failures == 1,
                    extra={"channels": self._channels, "failures": failures},
                )
                self._stop.wait(min(self._reconnect_cap_s, 0.05 * 2**failures))
            except Exception:  # e.g. on_subscribed failed: start over rather than go deaf
                failures += 1
                log.exception(
                    "subscriber failed; starting over", extra={"channels": self._channels}
                )
                self._stop.wait(min(self._reconnect_cap_s, 0.05 * 2**failures))
            finally:
                self._subscribed.clear()
                for closable in (pubsub, client):
                    if closable is not None:
                        try:
                            closable.close()
                        except Exception:  # the connection may be gone already
                            log.debug("closing a dead connection failed", exc_info=True)

    def _deliver(self, channel: str, data: str) -> None:
        try:
            message = json.loads(data)
        except ValueError:
            log.debug("ignoring a non-JSON message", extra={"channel": channel})
            return
        if not isinstance(message, dict):
            return
        try:
            self._on_message(channel, message)
        except Exception:  # one bad message must not stop the listener
            log.exception("message handler failed", extra={"channel": channel})
