"""Strict (allowlist-only) serialization of LangGraph checkpoint data.

:class:`StrictSerializer` is LangGraph's ``JsonPlusSerializer`` in its strict mode
(``pickle_fallback=False``, no JSON constructor allowlist, ``allowed_msgpack_modules`` =
LangGraph's ``SAFE_MSGPACK_TYPES`` plus the types the caller declares), with two more guards:

* Only the ``msgpack``, ``null``, ``bytes`` and ``bytearray`` type tags load. ``pickle``,
  ``json`` (whose LangChain reviver may import ``langchain_core`` classes) and unknown tags
  raise :class:`DisallowedTypeError`. This saver never writes them.
* Before LangGraph decodes a msgpack payload, an audit pass walks every extension object in
  it (nested ones too) *without importing or calling anything*. If any names a type outside
  the allowlist, a method outside LangGraph's ``SAFE_MSGPACK_METHODS``, a numpy array (unless
  ``numpy.ndarray`` is declared) or an unknown extension code, the load raises
  :class:`DisallowedTypeError`. LangGraph alone would log a warning and return the raw
  constructor arguments instead, which silently hands a plain dict to the graph.

So a tampered checkpoint fails loudly, and nothing outside the allowlist is ever imported or
called. Dumps are audited the same way by default (``check_dumps=True``), so a state value of
an undeclared type fails on the write that stores it, not on a later resume.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from inspect import isclass
from typing import Any, Final, NoReturn

import ormsgpack
from langgraph.checkpoint.serde._msgpack import SAFE_MSGPACK_METHODS, SAFE_MSGPACK_TYPES
from langgraph.checkpoint.serde.jsonplus import (
    EXT_CONSTRUCTOR_KW_ARGS,
    EXT_CONSTRUCTOR_POS_ARGS,
    EXT_CONSTRUCTOR_SINGLE_ARG,
    EXT_DELTA_SNAPSHOT,
    EXT_METHOD_SINGLE_ARG,
    EXT_NUMPY_ARRAY,
    EXT_PYDANTIC_V1,
    EXT_PYDANTIC_V2,
    JsonPlusSerializer,
)

from project.core.errors import StateError

__all__ = [
    "AllowedType",
    "CheckpointDecodeError",
    "CheckpointError",
    "DisallowedTypeError",
    "StrictSerializer",
    "strict_serializer",
]

AllowedType = type | tuple[str, ...]
"""A class, or its ``(module, qualified name)`` pair as LangGraph's allowlist spells it."""

_SAFE_TAGS: Final = frozenset({"msgpack", "null", "bytes", "bytearray"})
_CONSTRUCTOR_CODES: Final = frozenset(
    {
        EXT_CONSTRUCTOR_SINGLE_ARG,
        EXT_CONSTRUCTOR_POS_ARGS,
        EXT_CONSTRUCTOR_KW_ARGS,
        EXT_PYDANTIC_V1,
        EXT_PYDANTIC_V2,
    }
)
_NUMPY_ARRAY: Final = ("numpy", "ndarray")


class CheckpointError(StateError):
    """Base for checkpoint storage failures."""


class CheckpointDecodeError(CheckpointError):
    """Stored checkpoint data is malformed and cannot be decoded."""


class FencedWriteError(CheckpointError):
    """A fenced write was refused: the job moved to another epoch, or is no longer running
    (canceled, final). The run that tried it is stale and must stop."""


class DisallowedTypeError(CheckpointDecodeError):
    """Checkpoint data names a type, method or format outside the deserialization allowlist."""


def _allowlist_key(entry: AllowedType) -> tuple[str, ...]:
    if isclass(entry):
        return (entry.__module__, entry.__name__)
    if isinstance(entry, tuple) and len(entry) >= 2 and all(isinstance(p, str) for p in entry):
        return entry
    raise TypeError(f"an allowed type is a class or a (module, name) tuple, not {entry!r}")


class StrictSerializer(JsonPlusSerializer):
    """``JsonPlusSerializer`` that loads nothing outside an explicit allowlist, and never pickle.

    Args:
        allowed_types: Extra classes (or ``(module, name)`` pairs) that may be rebuilt on load,
            on top of LangGraph's ``SAFE_MSGPACK_TYPES`` (datetime, UUID, Decimal, sets,
            LangChain messages, ``Send``, ``Command``, ``Interrupt``...). Declare every
            dataclass, pydantic model, enum or namedtuple your graph state holds.
        check_dumps: Audit what :meth:`dumps_typed` produces, so a value that could not be
            loaded back fails when it is written.
    """

    def __init__(
        self, allowed_types: Iterable[AllowedType] = (), *, check_dumps: bool = True
    ) -> None:
        self.extra_types: frozenset[tuple[str, ...]] = frozenset(
            _allowlist_key(t) for t in allowed_types
        )
        self.check_dumps = check_dumps
        self._allowed: frozenset[tuple[str, ...]] = SAFE_MSGPACK_TYPES | self.extra_types
        super().__init__(
            pickle_fallback=False,
            allowed_json_modules=None,
            # None = strict: only SAFE_MSGPACK_TYPES (independent of LANGGRAPH_STRICT_MSGPACK).
            allowed_msgpack_modules=tuple(self.extra_types) or None,
        )

    def with_msgpack_allowlist(
        self, extra_allowlist: Iterable[tuple[str, ...] | type]
    ) -> StrictSerializer:
        """Return a serializer that also allows ``extra_allowlist``.

        LangGraph calls this (through ``BaseCheckpointSaver.with_allowlist``) with the types of
        the graph's state schema when ``LANGGRAPH_STRICT_MSGPACK=true``.
        """
        extra = {_allowlist_key(t) for t in extra_allowlist}
        if extra <= self.extra_types:
            return self
        return StrictSerializer(self.extra_types | extra, check_dumps=self.check_dumps)

    def dumps_typed(self, obj: Any) -> tuple[str, bytes]:
        """Serialize ``obj``; with ``check_dumps``, refuse what could not be loaded back.

        Raises:
            DisallowedTypeError: ``obj`` holds an instance of a type outside the allowlist.
        """
        type_, data = super().dumps_typed(obj)
        if self.check_dumps and type_ == "msgpack":
            self.audit(data)
        return type_, data

    def loads_typed(self, data: tuple[str, bytes]) -> Any:
        """Deserialize ``(type tag, bytes)`` after auditing it.

        Raises:
            DisallowedTypeError: the tag is not msgpack/null/bytes/bytearray, or the payload
                names a type or method outside the allowlist. Nothing was imported or called.
            CheckpointDecodeError: the payload is not valid msgpack.
        """
        type_, payload = data
        if type_ not in _SAFE_TAGS:
            raise DisallowedTypeError(f"refused checkpoint data of serialization type {type_!r}")
        if type_ == "msgpack":
            self.audit(payload)
        try:
            return super().loads_typed((type_, payload))
        except ValueError as exc:
            raise CheckpointDecodeError(f"undecodable checkpoint data: {exc}") from exc

    def audit(self, payload: bytes) -> None:
        """Check every extension object in a msgpack payload against the allowlist.

        Nothing is imported, constructed or called: the extension payloads are only unpacked
        into plain lists, strings and numbers and their names compared with the allowlist.

        Raises:
            DisallowedTypeError: an extension names something outside the allowlist.
            CheckpointDecodeError: the payload is not valid msgpack.
        """
        refused: list[str] = []
        try:
            ormsgpack.unpackb(
                payload, ext_hook=self._audit_hook(refused), option=ormsgpack.OPT_NON_STR_KEYS
            )
        except (ValueError, TypeError) as exc:
            # ormsgpack replaces an ext_hook's exception by ValueError("ext_hook failed").
            if refused:
                raise DisallowedTypeError(refused[0]) from None
            raise CheckpointDecodeError(f"undecodable checkpoint data: {exc}") from exc

    def _audit_hook(self, refused: list[str]) -> Callable[[int, bytes], None]:
        def refuse(message: str) -> NoReturn:
            refused.append(message)
            raise ValueError(message)

        def hook(code: int, data: bytes) -> None:
            if code == EXT_NUMPY_ARRAY:
                if _NUMPY_ARRAY not in self._allowed:
                    refuse("refused a numpy array in checkpoint data (numpy.ndarray not allowed)")
                return None
            try:
                inner = ormsgpack.unpackb(data, ext_hook=hook, option=ormsgpack.OPT_NON_STR_KEYS)
            except ValueError:
                if refused:
                    raise
                refuse(f"malformed msgpack extension {code} in checkpoint data")
            if code == EXT_DELTA_SNAPSHOT:
                return None
            if code in _CONSTRUCTOR_CODES or code == EXT_METHOD_SINGLE_ARG:
                arity = 4 if code == EXT_METHOD_SINGLE_ARG else 3
                if (
                    not isinstance(inner, list | tuple)
                    or len(inner) < arity
                    or not isinstance(inner[0], str)
                    or not isinstance(inner[1], str)
                    or (arity == 4 and not isinstance(inner[3], str))
                ):
                    refuse(f"malformed msgpack extension {code} in checkpoint data")
                if code == EXT_METHOD_SINGLE_ARG:
                    call = (inner[0], inner[1], inner[3])
                    if call not in SAFE_MSGPACK_METHODS:
                        refuse(f"refused to call {'.'.join(call)} from checkpoint data")
                elif (inner[0], inner[1]) not in self._allowed:
                    refuse(
                        f"refused to rebuild {inner[0]}.{inner[1]} from checkpoint data: "
                        "not in the allowlist (declare it in allowed_types)"
                    )
                return None
            refuse(f"refused unknown msgpack extension code {code} in checkpoint data")
            return None

        return hook


def strict_serializer(extra_types: Iterable[AllowedType] = ()) -> StrictSerializer:
    """The serializer :class:`~project.core.checkpoint.RedisSaver` uses by default.

    Args:
        extra_types: Classes (or ``(module, name)`` pairs) allowed on top of LangGraph's
            built-in safe types.

    Returns:
        A :class:`StrictSerializer` that never unpickles and audits dumps and loads.
    """
    return StrictSerializer(extra_types)
