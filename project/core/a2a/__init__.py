"""The A2A envelope protocol: signed messages between agents, keys, canonical form.

Pure logic, no Redis: replays are refused by the hops, from the job record they
move anyway (:func:`project.core.runtime.replay_of`).
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
