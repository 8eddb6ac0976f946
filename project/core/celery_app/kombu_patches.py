"""Small fixes to kombu's Redis transport, installed by :func:`apply`.

**One client per channel.** kombu builds a new ``redis.Redis`` object (sharing the
channel's connection pool) for every synchronous broker operation: each publish,
ack and restore. With redis-py 8 that construction was ~7% of all agent CPU in
the benchmark's profile. A client on a pool is thread-safe and holds no state
of its own, so one per channel pool is reused; a new pool (after a reconnect)
gets a new client.

**A guard around one race seen when Redis restarts.**

When the broker connection drops and comes back, work still in flight on the
old, closed channel (acknowledging a finished task, restoring delivered
messages) asks that channel for connection parameters. Its connection is gone,
so kombu raises ``AttributeError`` (``'NoneType' object has no attribute
'client'`` / ``'hostname'``, cf. celery/kombu#970 and celery/celery#10205).
Celery treats that as unrecoverable: the worker stops consuming and shuts down
instead of reconnecting.

The guard turns it into what it is, a broker connection error, which Celery
and kombu already handle: the ack is logged as failed and the message stays in
kombu's ``unacked`` hash, from where the visibility timeout (or, for tier
messages, the coordinator's health check) brings it back. A second delivery is
harmless here: envelopes carry job epochs, and the job record refuses a replay.

**A remote-control read that can never hang the worker.** Celery's remote control
(the pidbox) is a fanout queue, which kombu reads through a Redis subscription in
the worker's event loop, with a read that has no timeout (redis-py's
``PubSub.parse_response(block=True)``). When Redis is killed and is back already by
the time the worker reads the end of the old connection (its main thread was
starved of CPU or paused across the outage), redis-py reconnects inside that read
and reads again, but does not subscribe again (kombu opened the connection itself,
so redis-py's re-subscribe callback was never registered): the read waits forever
on a connection subscribed to nothing. The consumer sees no error, takes nothing
more from its queue and acks nothing, while the heartbeat thread goes on. Seen in
CI after a Redis restart; reproduced every time by pausing a worker across the
outage. The fix looks before it reads: a closed connection raises the broker
connection error at once, outside redis-py's retry, so Celery restarts the
consumer as after any broker loss; a reply that has begun is read with a bound.

**Riding out a Redis that refuses writes** (``maxmemory`` with ``noeviction``, a
read-only replica). Such a Redis refuses every ``MULTI``, even one of deletes, and
every write that could grow it, while ``BRPOP``, plain deletes and ``PUBLISH`` still
work. kombu's ack emulation writes on each message it hands out (a copy in its
``unacked`` hash), on each ack and on each restore, all in ``MULTI``; Celery's
consumer does these in the worker's main process and treats the error
(a ``ResponseError``, a channel error) as unrecoverable, so the worker exited.

* A message taken from its queue while Redis refuses the copy is handed out all the
  same (BRPOP already took it: refusing it would lose it); only its copy in
  ``unacked`` is missing until it is acknowledged. Were its process to die
  meanwhile, the coordinator's health check finds its job stuck and sends it again.
* An ack whose ``MULTI`` is refused drops the copy with plain deletes, which a full
  Redis takes. If even those are refused (a replica), the copy stays, and the
  visibility timeout hands it out again later: a redelivery the job's epoch makes
  harmless.
* A restore that is refused changes nothing: the message stays in ``unacked`` and
  the visibility timeout (or the health check) restores it later. The periodic scan
  for messages past the visibility timeout (and its lock) skips a round.
* The synchronous clients of kombu's channels get
  :class:`~project.core.state.connections.RideOutRetry` (with kombu's own retry
  behaviour otherwise): in a pool child, where tasks run, a publish Redis refuses
  (a task's next hop, its link callback, its retry) waits with backoff until Redis
  takes it, and the task holds on to its message meanwhile. In the main process
  they still fail fast, and the fixes above apply.

Each refusal is counted and logged (:func:`~project.core.state.connections.note_write_refusal`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from project.core.state.connections import (
    RideOutRetry,
    WriteOp,
    is_write_refused,
    note_write_refusal,
)

_original_connparams: Callable[..., Any] = kombu_redis.Channel._connparams
_original_create_client: Callable[..., Any] = kombu_redis.Channel._create_client
_original_append: Callable[..., Any] = kombu_redis.QoS.append
_original_ack: Callable[..., Any] = kombu_redis.QoS.ack
_original_reject: Callable[..., Any] = kombu_redis.QoS.reject
_original_restore_by_tag: Callable[..., Any] = kombu_redis.QoS.restore_by_tag
_original_restore_visible: Callable[..., Any] = kombu_redis.QoS.restore_visible
_original_receive_one: Callable[..., Any] = kombu_redis.Channel._receive_one
_original_poll_error: Callable[..., Any] = kombu_redis.Channel._poll_error
_CLIENT_ATTR = "_agents_sync_client"

LISTEN_READ_TIMEOUT_S = 1.0
"""Longest a subscription read waits for the rest of a reply that has begun to arrive."""


def _create_client(self: Any, asynchronous: bool = False) -> Any:
    if asynchronous:
        return _original_create_client(self, asynchronous=True)
    pool = self.pool
    cached = self.__dict__.get(_CLIENT_ATTR)
    if cached is not None and cached[0] is pool:
        return cached[1]
    client = _original_create_client(self, asynchronous=False)
    self.__dict__[_CLIENT_ATTR] = (pool, client)
    return client


def _connparams(self: Any, asynchronous: bool = False) -> Any:
    connection = self.connection
    if connection is None or connection.client is None:
        raise RedisConnectionError("broker channel is closed (its connection was lost)")
    params = _original_connparams(self, asynchronous=asynchronous)
    if not asynchronous and "retry" not in params:
        # What redis-py builds from kombu's retry_on_timeout, plus waiting out refused
        # writes where they are ridden out (a pool child's tasks).
        retries = 1 if params.get("retry_on_timeout") else 0
        params["retry"] = RideOutRetry(NoBackoff(), retries, op=WriteOp.BROKER)
    return params


def _append(self: Any, message: Any, delivery_tag: Any) -> None:
    try:
        _original_append(self, message, delivery_tag)
    except Exception as error:
        if not is_write_refused(error):
            raise
        note_write_refusal(WriteOp.RECEIVE, error)
        # Handed out without its copy in ``unacked``: BRPOP took it already.
        virtual.QoS.append(self, message, delivery_tag)  # type: ignore[no-untyped-call]


def _ack(self: Any, delivery_tag: Any) -> None:
    try:
        _original_ack(self, delivery_tag)
        return
    except Exception as error:
        if not is_write_refused(error):
            raise
        note_write_refusal(WriteOp.ACK, error)
    try:
        with self.channel.conn_or_acquire() as client:
            pipe = client.pipeline(transaction=False)  # deletes outside MULTI: taken when full
            pipe.zrem(self.unacked_index_key, delivery_tag)
            pipe.hdel(self.unacked_key, delivery_tag)
            pipe.execute()
    except Exception as error:
        if not is_write_refused(error):
            raise
        # A replica refuses deletes too: the copy stays, the visibility timeout returns it.
    virtual.QoS.ack(self, delivery_tag)  # type: ignore[no-untyped-call]


def _reject(self: Any, delivery_tag: Any, requeue: bool = False) -> None:
    if requeue:  # a refused restore leaves the message in ``unacked`` (see below)
        _original_reject(self, delivery_tag, requeue=True)
    else:  # the same two deletes as an ack
        _ack(self, delivery_tag)


def _restore_by_tag(self: Any, tag: Any, client: Any = None, leftmost: bool = False) -> None:
    try:
        _original_restore_by_tag(self, tag, client=client, leftmost=leftmost)
    except Exception as error:
        if not is_write_refused(error):
            raise
        # Its MULTI changed nothing: the message stays in ``unacked`` for later.
        note_write_refusal(WriteOp.RESTORE, error)


def _restore_visible(self: Any, *args: Any, **kwargs: Any) -> None:
    try:
        _original_restore_visible(self, *args, **kwargs)
    except Exception as error:
        if not is_write_refused(error):
            raise
        # Its lock (SET NX) was refused: the next round (every few seconds) tries again.
        note_write_refusal(WriteOp.RESTORE, error)


class _BoundedPubSub:
    """A channel's subscription client whose reads wait a bounded time, never forever."""

    __slots__ = ("_pubsub",)

    def __init__(self, pubsub: Any) -> None:
        self._pubsub = pubsub

    def parse_response(self, block: bool = True, timeout: float = 0) -> Any:
        return self._pubsub.parse_response(block=False, timeout=LISTEN_READ_TIMEOUT_S)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pubsub, name)


def _listen_readable(channel: Any, pubsub: Any) -> bool:
    """Whether the subscription has data; raises the connection error if it was closed.

    A closed subscription is a lost broker connection, never something to reconnect
    quietly: a quiet reconnect (``can_read`` on a closed connection opens a new one)
    subscribes to nothing, and the poller still watches the old socket.
    """
    connection = pubsub.connection
    try:
        if connection is None or connection._sock is None:
            raise RedisConnectionError("the broker subscription's connection was closed")
        return bool(connection.can_read(timeout=0))  # raises on end of file or reset
    except channel.connection_errors:
        channel._in_listen = None
        raise


def _receive_one(self: Any, c: Any) -> Any:
    if not _listen_readable(self, c):
        return None
    return _original_receive_one(self, _BoundedPubSub(c))


def _poll_error(self: Any, type: str, **options: Any) -> Any:
    if type != "LISTEN":
        return _original_poll_error(self, type, **options)
    if _listen_readable(self, self.subclient):
        _BoundedPubSub(self.subclient).parse_response()
    return None


def apply() -> None:
    """Install every fix (idempotent)."""
    kombu_redis.Channel._connparams = _connparams  # type: ignore[method-assign]
    kombu_redis.Channel._create_client = _create_client  # type: ignore[method-assign]
    kombu_redis.QoS.append = _append  # type: ignore[method-assign]
    kombu_redis.QoS.ack = _ack  # type: ignore[method-assign]
    kombu_redis.QoS.reject = _reject  # type: ignore[method-assign]
    kombu_redis.QoS.restore_by_tag = _restore_by_tag  # type: ignore[method-assign]
    kombu_redis.QoS.restore_visible = _restore_visible  # type: ignore[method-assign]
    kombu_redis.Channel._receive_one = _receive_one  # type: ignore[method-assign]
    kombu_redis.Channel._poll_error = _poll_error  # type: ignore[method-assign]
