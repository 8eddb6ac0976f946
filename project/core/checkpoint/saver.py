"""``RedisSaver``: a LangGraph checkpointer on plain Redis (6.2 and 7; no modules).

It mirrors the semantics of LangGraph's reference ``InMemorySaver``: a checkpoint is stored
without its channel values, and each channel value is a separate blob keyed by
``(namespace, channel, version)`` and written only when ``new_versions`` names it, so a
channel that did not change is not rewritten at each step. Pending writes are keyed by
``(task id, index)``; ordinary writes are insert-if-absent, while the special channels of
``WRITES_IDX_MAP`` (error, scheduled, interrupt, resume) overwrite. ``get_tuple`` returns the
pending writes in ``writes_sort_key`` order. Channel versions are strings, as
``InMemorySaver.get_next_version`` makes them (a counter plus a random fraction, so two forks
of one parent never write the same blob key).

Storage. One thread (we use thread id = job id) owns six keys, all with the thread id as
Redis hash tag; their layouts are documented at ``KEY_CHECKPOINT_*`` in
:mod:`project.core.constants`. Namespaces, checkpoint ids and task ids must not contain NUL
(LangGraph's never do); this is checked.

Round trips. Every operation is one Lua script (``*.lua`` beside this module, sent with
EVALSHA; the source goes to Redis once, after which its SHA is enough) or one command:

* ``put``: 1 (store checkpoint + changed blobs + trim), ``put_writes``: 1, ``get_tuple``: 1
  (checkpoint, its blobs and its writes together), ``delete_thread``: 1 (``DEL``),
  ``expire_thread``: 1 (``MULTI``/``EXPIRE`` x6/``EXEC``), ``copy_thread``: 1.
* ``list``: 1 per 32 checkpoints, plus 1 to find the namespaces when the config names none,
  plus a ``SCAN`` of the keyspace when ``config`` is ``None`` (an admin operation).

Retention. Only the newest ``keep_last`` checkpoints per thread and namespace are kept (by
checkpoint id, i.e. creation order, across forks). ``put`` trims in the same script: it
deletes the older checkpoints, every pending write stored against a checkpoint id older than
the oldest one kept, and the blobs the deleted checkpoints referenced that no kept checkpoint
of that namespace references. Consequences: ``parent_config`` of the oldest kept checkpoint
points to a checkpoint that is gone; time travel reaches back ``keep_last`` checkpoints;
LangGraph's beta ``DeltaChannel`` (which replays writes along the parent chain) needs
``keep_last=None`` (keep everything). Subgraph namespaces are trimmed each on its own and
disappear with the thread (``delete_thread``/``expire_thread``).

Async. The ``a*`` methods use a native ``redis.asyncio.Redis`` client given to the
constructor; without one they raise :class:`~project.core.errors.ConfigurationError` instead
of quietly blocking a thread pool on the sync client. The caller turns redis://, rediss://
and sentinel:// URLs into both clients, e.g. with ``decode_responses=False`` (either setting
works: replies of the scripts are never decoded).

Errors. Connection failures raise :class:`~project.core.errors.StoreUnavailableError`; data
that cannot be decoded or names a type outside the allowlist raises
:class:`~project.core.checkpoint.serde.CheckpointDecodeError` /
:class:`~project.core.checkpoint.serde.DisallowedTypeError`.
"""

from __future__ import annotations

import builtins
import hashlib
import random
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Iterator,
    Sequence,
)
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, cast

import ormsgpack
import redis
import redis.asyncio
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    PendingWrite,
    get_checkpoint_id,
    get_checkpoint_metadata,
    writes_sort_key,
)
from langgraph.checkpoint.serde.base import SerializerProtocol
from redis.client import NEVER_DECODE
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from project.core.checkpoint.serde import (
    AllowedType,
    CheckpointDecodeError,
    CheckpointError,
    FencedWriteError,
    strict_serializer,
)
from project.core.constants import (
    CHECKPOINT_KEEP_LAST,
    KEY_CHECKPOINT_INDEX,
    checkpoint_keys,
)
from project.core.errors import ConfigurationError, StoreUnavailableError

__all__ = ["RedisSaver", "thread_keys"]

_RAW: Final[dict[str, Any]] = {NEVER_DECODE: True}
"""Execute-command option: return the reply as bytes even on a ``decode_responses`` client."""
_LIST_BATCH: Final = 32
_SEP: Final = "\0"
_EMPTY: Final = "empty"
"""Type tag of a blob for a channel named in ``new_versions`` that has no value."""
_INDEX_KEYS: Final = KEY_CHECKPOINT_INDEX + "*"
"""``SCAN`` pattern of every thread's index key (``list(None)``: every thread)."""
_SCAN_COUNT: Final = 1000

_Keys = tuple[str, str, str, str, str, str]
_Call = tuple[Sequence[str], Sequence[Any]]


@dataclass(frozen=True)
class _Script:
    source: bytes
    sha: str


def _load_script(name: str) -> _Script:
    source = Path(__file__).with_name(name).read_bytes()
    return _Script(source, hashlib.sha1(source).hexdigest())


_PUT: Final = _load_script("put.lua")
_PUT_WRITES: Final = _load_script("put_writes.lua")
_READ: Final = _load_script("read.lua")
_COPY: Final = _load_script("copy.lua")


def thread_keys(thread_id: str) -> tuple[str, str, str, str, str, str]:
    """Every Redis key a thread's checkpoints live in (index, data, refs, blobs, writes x2).

    Args:
        thread_id: The LangGraph thread id (here: the job id).

    Returns:
        The six keys, in the order the Lua scripts take them.
    """
    return checkpoint_keys(thread_id)


def _part(value: object, what: str) -> str:
    text = str(value)
    if _SEP in text:
        raise CheckpointError(f"a checkpoint {what} may not contain a NUL byte")
    return text


def _blob_field(ns: str, version: object, channel: str) -> str:
    return f"{ns}{_SEP}{_part(version, 'channel version')}{_SEP}{channel}"


def _pack(value: Any) -> bytes:
    return ormsgpack.packb(value)


def _unpack(raw: Any, size: int, what: str) -> Sequence[Any]:
    try:
        value = ormsgpack.unpackb(raw)
    except (TypeError, ValueError) as exc:
        raise CheckpointDecodeError(f"undecodable checkpoint {what}") from exc
    if not isinstance(value, list) or (size >= 0 and len(value) != size):
        raise CheckpointDecodeError(f"malformed checkpoint {what}")
    return value


def _typed(type_: Any, data: Any, what: str) -> tuple[str, bytes]:
    if not isinstance(type_, str) or not isinstance(data, bytes):
        raise CheckpointDecodeError(f"malformed checkpoint {what}")
    return type_, data


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _command(client: redis.Redis, *args: Any) -> Any:
    """Run one command on the sync client; its reply stays bytes."""
    return client.execute_command(*args, **_RAW)  # type: ignore[no-untyped-call]


@contextmanager
def _redis_errors() -> Generator[None, None, None]:
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError) as exc:
        raise StoreUnavailableError(f"Redis unreachable for checkpoints: {exc}") from exc
    except ResponseError as exc:
        if str(exc).startswith("FENCED"):
            raise FencedWriteError(f"checkpoint write refused: {str(exc)[7:]}") from None
        raise


FENCE: Final = "job_fence"
"""Configurable key of a run whose writes are fenced: ``[job record key, epoch]``. Every
``put`` and ``put_writes`` then writes only while that job is IN_PROGRESS at that epoch,
checked in the same script, and raises :class:`FencedWriteError` otherwise."""


def _fence(config: RunnableConfig) -> tuple[Sequence[str], Sequence[Any]]:
    fence = config["configurable"].get(FENCE)
    if not fence:
        return (), ()
    key, epoch = fence
    return (str(key),), (str(int(epoch)),)


def _config(thread_id: Any, ns: str, checkpoint_id: str) -> RunnableConfig:
    return {
        "configurable": {
            "thread_id": thread_id,
            "checkpoint_ns": ns,
            "checkpoint_id": checkpoint_id,
        }
    }


def _thread_ids(index_keys: Iterable[Any]) -> list[str]:
    """The thread ids of the index keys a ``SCAN`` found: sorted, each once."""
    return sorted({_text(key)[len(KEY_CHECKPOINT_INDEX) + 1 : -1] for key in index_keys})


def _named_namespace(config: RunnableConfig | None) -> list[str] | None:
    """``[namespace]`` if ``config`` names one, else ``None`` (every namespace of the thread)."""
    if config and config["configurable"].get("checkpoint_ns") is not None:
        return [_part(config["configurable"]["checkpoint_ns"], "namespace")]
    return None


def _namespaces(members: Iterable[Any]) -> list[str]:
    seen: dict[str, None] = {}
    for member in members:
        seen.setdefault(_text(member).split(_SEP, 1)[0])
    return [*seen]


def _matches(metadata: Any, filter: dict[str, Any] | None) -> bool:
    return not filter or all(value == metadata.get(key) for key, value in filter.items())


class _Listing:
    """Where one ``list``/``alist`` call stands: the next read's arguments, what to yield.

    Pure, so that the sync and async APIs share it and differ only in how they read.
    """

    def __init__(
        self,
        decode: Callable[[Any, str, Any], Iterator[CheckpointTuple]],
        config: RunnableConfig | None,
        filter: dict[str, Any] | None,
        before: RunnableConfig | None,
        limit: int | None,
    ) -> None:
        self._decode = decode
        self._exact = get_checkpoint_id(config) if config else None
        self._before = get_checkpoint_id(before) if before else None
        self._filter = filter
        self._remaining = limit
        self._size = _LIST_BATCH
        self._last = ""

    @property
    def exhausted(self) -> bool:
        """``limit`` tuples were yielded: nothing more is read."""
        return self._remaining is not None and self._remaining <= 0

    def read_args(self, ns: str, cursor: str) -> Sequence[Any]:
        """Arguments of the read script for the page after ``cursor`` (``""``: the first)."""
        remaining = self._remaining
        batch = _LIST_BATCH if remaining is None or self._filter else min(remaining, _LIST_BATCH)
        self._size = max(1, batch)
        bound = cursor or self._before or ""
        exact = _part(self._exact, "id") if self._exact else ""
        return (ns, exact, _part(bound, "id"), self._size)

    def take(self, thread_id: Any, ns: str, rows: Any) -> Iterator[CheckpointTuple]:
        """Decode a page; yield the tuples that pass ``before``, ``filter`` and ``limit``."""
        for tup in self._decode(thread_id, ns, rows):
            checkpoint_id = tup.config["configurable"]["checkpoint_id"]
            self._last = checkpoint_id
            if self._before and checkpoint_id >= self._before:
                continue
            if not _matches(tup.metadata, self._filter):
                continue
            if self._remaining is not None:
                if self._remaining <= 0:
                    break
                self._remaining -= 1
            yield tup

    def cursor_after(self, rows: Sequence[Any]) -> str | None:
        """Where the page after ``rows`` (just taken) starts; ``None`` if there is none."""
        if len(rows) < self._size or self._exact:
            return None
        return self._last


class RedisSaver(BaseCheckpointSaver[str]):
    """LangGraph checkpointer storing checkpoints, channel blobs and pending writes in Redis.

    Args:
        client: Sync client (plain, TLS or Sentinel master); any ``decode_responses``.
        aclient: Async client for the ``a*`` methods (``graph.ainvoke``/``astream``).
            Without it those methods raise ``ConfigurationError``.
        keep_last: Checkpoints kept per thread and namespace (older ones, their writes and
            their no longer referenced blobs are deleted on ``put``); ``None`` keeps all.
        serde: Serializer. Default: :func:`~project.core.checkpoint.serde.strict_serializer`.
        allowed_types: Extra classes the default serializer may rebuild (dataclasses,
            pydantic models, enums... in the graph state). Not combinable with ``serde``.

    Raises:
        ConfigurationError: ``keep_last`` is not ``None`` or a positive int, or both
            ``serde`` and ``allowed_types`` were given.
    """

    def __init__(
        self,
        client: redis.Redis,
        aclient: redis.asyncio.Redis | None = None,
        *,
        keep_last: int | None = CHECKPOINT_KEEP_LAST,
        serde: SerializerProtocol | None = None,
        allowed_types: Iterable[AllowedType] = (),
    ) -> None:
        if keep_last is not None and (
            not isinstance(keep_last, int) or isinstance(keep_last, bool) or keep_last < 1
        ):
            raise ConfigurationError("keep_last is a positive number of checkpoints or None")
        extra = tuple(allowed_types)
        if serde is not None and extra:
            raise ConfigurationError("pass allowed_types to strict_serializer(), not with serde")
        super().__init__(serde=serde if serde is not None else strict_serializer(extra))
        self.client = client
        self.aclient = aclient
        self.keep_last = keep_last

    # --- sync API ------------------------------------------------------------------------

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """Fetch a checkpoint with its channel values and pending writes (one round trip).

        Args:
            config: ``thread_id``, optional ``checkpoint_ns`` and ``checkpoint_id`` (without
                it, the newest checkpoint of the namespace).

        Returns:
            The checkpoint tuple, or ``None`` if there is no such checkpoint.
        """
        keys, args, exact = self._get_call(config)
        rows = self._eval(_READ, keys, args)
        return self._first(config, rows, exact)

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        """List checkpoints, newest first within each namespace.

        Args:
            config: ``thread_id`` (``None``: every thread, found by ``SCAN``), optional
                ``checkpoint_ns`` (absent: every namespace of the thread, in lexical order)
                and ``checkpoint_id`` (only that checkpoint).
            filter: Metadata key/values that must all be equal.
            before: Only checkpoints with a lower id than this config's ``checkpoint_id``.
            limit: At most this many tuples in total.

        Yields:
            Matching checkpoint tuples.
        """
        listing = _Listing(self._decode_rows, config, filter, before, limit)
        for thread_id in self._threads(config):
            if listing.exhausted:
                return
            keys = thread_keys(thread_id)
            for ns in self._namespaces_of(config, keys):
                cursor: str | None = ""
                while cursor is not None and not listing.exhausted:
                    rows = self._eval(_READ, keys, listing.read_args(ns, cursor))
                    yield from listing.take(thread_id, ns, rows)
                    cursor = listing.cursor_after(rows)

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Store a checkpoint and the blobs of its changed channels; trim old checkpoints.

        Args:
            config: ``thread_id``, ``checkpoint_ns`` and the parent's ``checkpoint_id``.
            checkpoint: The checkpoint.
            metadata: Its metadata (merged with the config's, as LangGraph's savers do).
            new_versions: Channels whose value changed since the parent, with new versions.

        Returns:
            The config addressing the stored checkpoint.
        """
        keys, args, stored = self._put_call(config, checkpoint, metadata, new_versions)
        self._eval(_PUT, keys, args)
        return stored

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Store a task's pending writes against a checkpoint (one round trip).

        Args:
            config: Addresses the checkpoint (``thread_id``, ``checkpoint_ns``,
                ``checkpoint_id``).
            writes: ``(channel, value)`` pairs.
            task_id: The task that wrote them.
            task_path: The task's path (orders writes, see ``writes_sort_key``).
        """
        if writes:
            self._eval(_PUT_WRITES, *self._put_writes_call(config, writes, task_id, task_path))

    def delete_thread(self, thread_id: str) -> None:
        """Delete every checkpoint, blob and pending write of a thread (one ``DEL``).

        Args:
            thread_id: The thread.
        """
        with _redis_errors():
            self.client.delete(*thread_keys(thread_id))

    def expire_thread(self, thread_id: str, ttl_s: int) -> int:
        """Give every key of a thread a time to live (call it once the job is final).

        Keys a later write creates again have no TTL: call it again after resuming a thread.

        Args:
            thread_id: The thread.
            ttl_s: Seconds until Redis deletes the thread's checkpoints.

        Returns:
            How many of the thread's keys exist and got the TTL.
        """
        ttl = self._ttl(ttl_s)
        with _redis_errors():
            pipe = self.client.pipeline(transaction=True)
            for key in thread_keys(thread_id):
                pipe.expire(key, ttl)
            return sum(1 for done in pipe.execute() if done)

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """Keep only the newest checkpoint per namespace (``keep_latest``) or none (``delete``).

        Args:
            thread_ids: The threads.
            strategy: ``"keep_latest"`` or ``"delete"``.

        Raises:
            CheckpointError: Unknown strategy.
        """
        self._check_strategy(strategy)
        for thread_id in thread_ids:
            if strategy == "delete":
                self.delete_thread(thread_id)
                continue
            keys = thread_keys(thread_id)
            for ns in self._namespaces_of(None, keys):
                self._eval(_PUT, keys, self._trim_args(ns))

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Merge every checkpoint, blob and pending write of one thread into another.

        Args:
            source_thread_id: Thread to copy from (unchanged).
            target_thread_id: Thread to copy into.
        """
        keys = (*thread_keys(source_thread_id), *thread_keys(target_thread_id))
        self._eval(_COPY, keys, ())

    def get_next_version(self, current: str | None, channel: None) -> str:
        """Next channel version: as ``InMemorySaver``, a counter plus a random fraction.

        Args:
            current: The current version (``None`` for a new channel).
            channel: Unused (LangGraph keeps it for compatibility).

        Returns:
            A version greater than ``current``.
        """
        if current is None:
            current_v = 0
        elif isinstance(current, int):
            current_v = current
        else:
            current_v = int(current.split(".")[0])
        return f"{current_v + 1:032}.{random.random():016}"

    # --- async API -----------------------------------------------------------------------

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """Async :meth:`get_tuple` on the async client.

        Args:
            config: As for :meth:`get_tuple`.

        Returns:
            The checkpoint tuple, or ``None``.
        """
        keys, args, exact = self._get_call(config)
        rows = await self._aeval(_READ, keys, args)
        return self._first(config, rows, exact)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        """Async :meth:`list` on the async client.

        Args:
            config: As for :meth:`list`.
            filter: As for :meth:`list`.
            before: As for :meth:`list`.
            limit: As for :meth:`list`.

        Yields:
            Matching checkpoint tuples.
        """
        listing = _Listing(self._decode_rows, config, filter, before, limit)
        for thread_id in await self._athreads(config):
            if listing.exhausted:
                return
            keys = thread_keys(thread_id)
            for ns in await self._anamespaces_of(config, keys):
                cursor: str | None = ""
                while cursor is not None and not listing.exhausted:
                    rows = await self._aeval(_READ, keys, listing.read_args(ns, cursor))
                    for tup in listing.take(thread_id, ns, rows):
                        yield tup
                    cursor = listing.cursor_after(rows)

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Async :meth:`put` on the async client.

        Args:
            config: As for :meth:`put`.
            checkpoint: As for :meth:`put`.
            metadata: As for :meth:`put`.
            new_versions: As for :meth:`put`.

        Returns:
            The config addressing the stored checkpoint.
        """
        keys, args, stored = self._put_call(config, checkpoint, metadata, new_versions)
        await self._aeval(_PUT, keys, args)
        return stored

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Async :meth:`put_writes` on the async client.

        Args:
            config: As for :meth:`put_writes`.
            writes: As for :meth:`put_writes`.
            task_id: As for :meth:`put_writes`.
            task_path: As for :meth:`put_writes`.
        """
        if writes:
            call = self._put_writes_call(config, writes, task_id, task_path)
            await self._aeval(_PUT_WRITES, *call)

    async def adelete_thread(self, thread_id: str) -> None:
        """Async :meth:`delete_thread` on the async client.

        Args:
            thread_id: The thread.
        """
        aclient = self._async_client()
        with _redis_errors():
            await aclient.delete(*thread_keys(thread_id))

    async def aexpire_thread(self, thread_id: str, ttl_s: int) -> int:
        """Async :meth:`expire_thread` on the async client.

        Args:
            thread_id: The thread.
            ttl_s: Seconds until Redis deletes the thread's checkpoints.

        Returns:
            How many of the thread's keys exist and got the TTL.
        """
        ttl = self._ttl(ttl_s)
        aclient = self._async_client()
        with _redis_errors():
            pipe = aclient.pipeline(transaction=True)
            for key in thread_keys(thread_id):
                pipe.expire(key, ttl)
            return sum(1 for done in await pipe.execute() if done)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """Async :meth:`prune` on the async client.

        Args:
            thread_ids: The threads.
            strategy: ``"keep_latest"`` or ``"delete"``.
        """
        self._check_strategy(strategy)
        for thread_id in thread_ids:
            if strategy == "delete":
                await self.adelete_thread(thread_id)
                continue
            keys = thread_keys(thread_id)
            for ns in await self._anamespaces_of(None, keys):
                await self._aeval(_PUT, keys, self._trim_args(ns))

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Async :meth:`copy_thread` on the async client.

        Args:
            source_thread_id: Thread to copy from (unchanged).
            target_thread_id: Thread to copy into.
        """
        keys = (*thread_keys(source_thread_id), *thread_keys(target_thread_id))
        await self._aeval(_COPY, keys, ())

    # --- commands (shared by both APIs) ----------------------------------------------------

    def _get_call(self, config: RunnableConfig) -> tuple[Sequence[str], Sequence[Any], bool]:
        conf = config["configurable"]
        ns = _part(conf.get("checkpoint_ns") or "", "namespace")
        checkpoint_id = get_checkpoint_id(config)
        exact = bool(checkpoint_id)
        args = (ns, _part(checkpoint_id, "id") if exact else "", "", 1)
        return thread_keys(conf["thread_id"]), args, exact

    def _put_call(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> tuple[Sequence[str], Sequence[Any], RunnableConfig]:
        conf = config["configurable"]
        thread_id = conf["thread_id"]
        ns = _part(conf.get("checkpoint_ns") or "", "namespace")
        checkpoint_id = _part(checkpoint["id"], "id")
        parent = conf.get("checkpoint_id")
        values = checkpoint["channel_values"]
        stored = {k: v for k, v in checkpoint.items() if k != "channel_values"}
        blobs: list[Any] = []
        for channel, version in new_versions.items():
            typed = self.serde.dumps_typed(values[channel]) if channel in values else (_EMPTY, b"")
            blobs += (_blob_field(ns, version, channel), _pack(typed))
        refs = {_blob_field(ns, v, c) for c, v in checkpoint["channel_versions"].items()}
        refs.update(_blob_field(ns, v, c) for c, v in new_versions.items())
        record = _pack(
            [
                *self.serde.dumps_typed(stored),
                *self.serde.dumps_typed(get_checkpoint_metadata(config, metadata)),
                parent,
            ]
        )
        args = (
            ns,
            checkpoint_id,
            record,
            _pack(sorted(refs)),
            self.keep_last or 0,
            len(new_versions),
            *blobs,
        )
        fence_keys, fence_args = _fence(config)
        return (
            (*thread_keys(thread_id), *fence_keys),
            (*args, *fence_args),
            _config(thread_id, ns, checkpoint_id),
        )

    def _put_writes_call(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str,
    ) -> _Call:
        conf = config["configurable"]
        ns = _part(conf.get("checkpoint_ns") or "", "namespace")
        prefix = _SEP.join((ns, _part(conf["checkpoint_id"], "id"), _part(task_id, "task id")))
        args: list[Any] = [len(writes)]
        for idx, (channel, value) in enumerate(writes):
            slot = WRITES_IDX_MAP.get(channel, idx)
            record = _pack([channel, *self.serde.dumps_typed(value), task_path])
            args += (f"{prefix}{_SEP}{slot}", record, "1" if slot < 0 else "0")
        keys = thread_keys(conf["thread_id"])
        fence_keys, fence_args = _fence(config)
        return (keys[4], keys[5], *fence_keys), (*args, *fence_args)

    def _trim_args(self, ns: str) -> Sequence[Any]:
        return (ns, "", b"", b"", 1, 0)

    # --- decoding --------------------------------------------------------------------------

    def _first(self, config: RunnableConfig, rows: Any, exact: bool) -> CheckpointTuple | None:
        conf = config["configurable"]
        ns = conf.get("checkpoint_ns") or ""
        for tup in self._decode_rows(conf["thread_id"], ns, rows):
            return tup._replace(config=config) if exact else tup
        return None

    def _decode_rows(self, thread_id: Any, ns: str, rows: Any) -> Iterator[CheckpointTuple]:
        if not isinstance(rows, list):
            raise CheckpointDecodeError("malformed reply of the checkpoint read script")
        for row in rows:
            yield self._decode_row(thread_id, ns, row)

    def _decode_row(self, thread_id: Any, ns: str, row: Any) -> CheckpointTuple:
        if not isinstance(row, list) or len(row) != 6:
            raise CheckpointDecodeError("malformed reply of the checkpoint read script")
        member, record, refs, blob_values, write_members, write_values = row
        checkpoint_id = _text(member).split(_SEP, 1)[1]
        c_type, c_data, m_type, m_data, parent = _unpack(record, 5, "record")
        loaded = self.serde.loads_typed(_typed(c_type, c_data, "record"))
        metadata = self.serde.loads_typed(_typed(m_type, m_data, "metadata"))
        if not isinstance(loaded, dict) or not isinstance(loaded.get("channel_versions"), dict):
            raise CheckpointDecodeError("malformed checkpoint record")
        fields = _unpack(refs, -1, "blob references") if refs else []
        blobs = dict(zip(fields, blob_values, strict=False))
        channel_values: dict[str, Any] = {}
        for channel, version in loaded["channel_versions"].items():
            raw = blobs.get(_blob_field(ns, version, channel))
            if raw is None:
                continue
            pair = _unpack(raw, 2, "blob")
            type_, data = _typed(pair[0], pair[1], "blob")
            if type_ != _EMPTY:
                channel_values[channel] = self.serde.loads_typed((type_, data))
        return CheckpointTuple(
            config=_config(thread_id, ns, checkpoint_id),
            checkpoint=cast(Checkpoint, {**loaded, "channel_values": channel_values}),
            metadata=cast(CheckpointMetadata, metadata),
            parent_config=_config(thread_id, ns, parent) if parent else None,
            pending_writes=self._decode_writes(write_members, write_values),
        )

    def _decode_writes(self, members: Any, values: Any) -> builtins.list[PendingWrite]:
        found: list[tuple[tuple[str, str, int], str, str, tuple[str, bytes]]] = []
        for member, raw in zip(members, values, strict=True):
            if raw is None:
                continue  # trimmed between the two reads of the script: cannot happen in Lua
            _, _, task_id, idx = _text(member).split(_SEP)
            channel, type_, data, task_path = _unpack(raw, 4, "write")
            typed = _typed(type_, data, "write")
            found.append(
                (writes_sort_key(str(task_path), task_id, int(idx)), task_id, channel, typed)
            )
        found.sort(key=lambda write: write[0])
        return [(task_id, channel, self.serde.loads_typed(t)) for _, task_id, channel, t in found]

    # --- Redis plumbing ----------------------------------------------------------------------

    @staticmethod
    def _ttl(ttl_s: int) -> int:
        if not isinstance(ttl_s, int) or isinstance(ttl_s, bool) or ttl_s < 1:
            raise CheckpointError("a checkpoint TTL is a positive number of seconds")
        return ttl_s

    @staticmethod
    def _check_strategy(strategy: str) -> None:
        if strategy not in ("keep_latest", "delete"):
            raise CheckpointError(f"unknown prune strategy {strategy!r}")

    def _async_client(self) -> redis.asyncio.Redis:
        if self.aclient is None:
            raise ConfigurationError(
                "RedisSaver has no async client: pass aclient=redis.asyncio.Redis(...) to use "
                "the async API (ainvoke, astream, aget_tuple...)"
            )
        return self.aclient

    def _eval(self, script: _Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        with _redis_errors():
            try:
                return _command(self.client, "EVALSHA", script.sha, len(keys), *keys, *args)
            except NoScriptError:
                return _command(self.client, "EVAL", script.source, len(keys), *keys, *args)

    async def _aeval(self, script: _Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        run = cast(Callable[..., Awaitable[Any]], self._async_client().execute_command)
        with _redis_errors():
            try:
                return await run("EVALSHA", script.sha, len(keys), *keys, *args, **_RAW)
            except NoScriptError:
                return await run("EVAL", script.source, len(keys), *keys, *args, **_RAW)

    def _threads(self, config: RunnableConfig | None) -> Sequence[str]:
        if config:
            return [config["configurable"]["thread_id"]]
        with _redis_errors():
            return _thread_ids(self.client.scan_iter(match=_INDEX_KEYS, count=_SCAN_COUNT))

    async def _athreads(self, config: RunnableConfig | None) -> Sequence[str]:
        if config:
            return [config["configurable"]["thread_id"]]
        aclient = self._async_client()
        with _redis_errors():
            found = [key async for key in aclient.scan_iter(match=_INDEX_KEYS, count=_SCAN_COUNT)]
        return _thread_ids(found)

    def _namespaces_of(self, config: RunnableConfig | None, keys: _Keys) -> Sequence[str]:
        if (named := _named_namespace(config)) is not None:
            return named
        with _redis_errors():
            return _namespaces(_command(self.client, "ZRANGE", keys[0], 0, -1))

    async def _anamespaces_of(self, config: RunnableConfig | None, keys: _Keys) -> Sequence[str]:
        if (named := _named_namespace(config)) is not None:
            return named
        run = cast(Callable[..., Awaitable[Any]], self._async_client().execute_command)
        with _redis_errors():
            return _namespaces(await run("ZRANGE", keys[0], 0, -1, **_RAW))
