"""The A2A envelope protocol: signed messages between agents, keys, replay protection.

Pure logic lives in :mod:`~project.core.a2a.envelope`; the replay guard in
:mod:`~project.core.a2a.replay` is the one part that talks to Redis.
"""

from project.core.a2a.envelope import (
    CausalMetadata,
    Envelope,
    Keyring,
    MessageType,
    Signer,
    canonical_bytes,
    now_ms,
    verify,
)

__all__ = [
    "CausalMetadata",
    "Envelope",
    "Keyring",
    "MessageType",
    "Signer",
    "canonical_bytes",
    "now_ms",
    "verify",
]
