"""Envelopes signed by hand, for tests of what a receiver does with them."""

from __future__ import annotations

from project.core.a2a.envelope import Envelope, MessageType, Signer


def bare_envelope(
    signer: Signer,
    message_type: MessageType,
    *,
    sender: str = "a",
    recipient: str = "b",
    ttl_ms: int | None = None,
) -> Envelope:
    """A signed envelope that continues no chain: empty payload, request id ``"r"``, no parent.

    Args:
        signer: Signs it (with its active key and, unless ``ttl_ms`` is given, its lifetime).
        message_type: The envelope's type.
        sender: Sender and origin.
        recipient: Recipient.
        ttl_ms: Lifetime instead of the signer's; negative: expired when signed.
    """
    return signer.sign(
        message_type,
        sender=sender,
        recipient=recipient,
        payload={},
        origin=sender,
        request_id="r",
        parent_request_id=None,
        ttl_ms=ttl_ms,
    )
