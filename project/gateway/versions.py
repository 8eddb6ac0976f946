"""Task versions: a job-log cursor and a write counter in one ordered number.

The SDK orders versions (``TaskVersion.is_after``) and hands a task's version back on
its next write (compare-and-set). Ours packs two things, most significant first:

* the job-log cursor the task reflects (a Redis stream id ``ms-seq``), so a replica
  that serves a snapshot streams exactly the log events after it, and
* the count of gateway writes to the task's record, the compare-and-set token.

An event read from the log has the version of its cursor with a count of 0: it is
after every snapshot taken before it was logged and not after any that folded it.
"""

from __future__ import annotations

from typing import Final

from a2a.server.cluster.version import TaskVersion

__all__ = ["counter_of", "cursor_of", "pack"]

_COUNTER_BITS: Final = 32
_SEQ_BITS: Final = 64
_COUNTER_MASK: Final = (1 << _COUNTER_BITS) - 1
_SEQ_MASK: Final = (1 << _SEQ_BITS) - 1


def _split(cursor: str) -> tuple[int, int]:
    ms, _, seq = cursor.partition("-")
    return int(ms), int(seq or 0)


def pack(cursor: str | None, counter: int) -> TaskVersion:
    """The version of a task that reflects the log up to ``cursor`` after ``counter`` writes.

    Raises:
        ValueError: ``cursor`` is not a stream id, or ``counter`` is out of range.
    """
    if not 0 <= counter <= _COUNTER_MASK:
        raise ValueError(f"write counter out of range: {counter}")
    ms, seq = _split(cursor) if cursor else (0, 0)
    return TaskVersion((((ms << _SEQ_BITS) | seq) << _COUNTER_BITS) | counter)


def _int(version: TaskVersion) -> int:
    value = version._value  # the SDK keeps the value private; ours is always an int
    if not isinstance(value, int):
        raise TypeError(f"not a gateway task version: {version!r}")
    return value


def cursor_of(version: TaskVersion) -> str | None:
    """The job-log cursor a version reflects (None before the first log event)."""
    position = _int(version) >> _COUNTER_BITS
    if position == 0:
        return None
    return f"{position >> _SEQ_BITS}-{position & _SEQ_MASK}"


def counter_of(version: TaskVersion) -> int:
    """The write counter of a version (0: never written, or read from the log)."""
    return _int(version) & _COUNTER_MASK
