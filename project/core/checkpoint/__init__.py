"""LangGraph checkpoints in plain Redis: :class:`RedisSaver` and its strict serializer.

Thread id = job id. Every key of a thread is listed by :func:`thread_keys`; call
:meth:`RedisSaver.expire_thread` once the job is final so they expire.
"""

from project.core.checkpoint.saver import FENCE, RedisSaver, thread_keys
from project.core.checkpoint.serde import (
    CheckpointDecodeError,
    CheckpointError,
    DisallowedTypeError,
    FencedWriteError,
    StrictSerializer,
    strict_serializer,
)

__all__ = [
    "FENCE",
    "CheckpointDecodeError",
    "CheckpointError",
    "DisallowedTypeError",
    "FencedWriteError",
    "RedisSaver",
    "StrictSerializer",
    "strict_serializer",
    "thread_keys",
]
