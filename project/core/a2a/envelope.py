"""Signed A2A envelopes: the one message format every tier speaks.

An envelope is signed with HMAC-SHA256 over its *canonical form*: the JSON of
every field except ``signature``, with sorted keys, no insignificant whitespace,
ASCII-only escapes, no NaN/Infinity, and timestamps as integer milliseconds.
That rendering is a fixed point of a JSON round trip, so an envelope that went
through Celery's JSON serializer and back verifies unchanged.

Verification checks, in order: shape (a JSON object with a string ``key_id``
and ``signature``), size, key id, signature (``hmac.compare_digest``), field
types (strict pydantic validation) and time (see :func:`verify`). Replays are
refused by the hops, from the job record they move anyway.

An envelope's time is where two agents' clocks meet: the signer stamps it
with its wall clock (``causal.timestamp_ms``, and ``expires_at_ms`` =
that + TTL) and the verifier reads its own. So the check allows for clock skew
(``skew_ms``, from ``AGENTS_ENVELOPE_CLOCK_SKEW_S``): an envelope is refused as
expired only once the verifier's clock is ``skew_ms`` past its expiry, and as
from the future if it was signed more than ``skew_ms`` ahead of the verifier's
clock. With clocks within ``skew_ms`` of each other an envelope is accepted for at
least its TTL of real time after signing, and for at most TTL + 2 x ``skew_ms``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
import time
import uuid
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

from project.core import metrics
from project.core.constants import PROTOCOL_VERSION
from project.core.errors import (
    ConfigurationError,
    ExpiredEnvelopeError,
    LapsedEnvelopeError,
    MalformedEnvelopeError,
    SignatureError,
    UnknownKeyError,
    invalid_fields,
)
from project.core.settings import Settings

MIN_SECRET_BYTES = 32
DEV_KEY_ID = "dev"
_DEV_SECRET = b"development-only-a2a-key-never-use-in-production"
_KEY_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# Room for everything but the payload when checking an envelope's size.
ENVELOPE_OVERHEAD_BYTES = 4096


class MessageType(StrEnum):
    """What an envelope is for."""

    REQUEST = "REQUEST"
    RESPONSE = "RESPONSE"
    HEARTBEAT = "HEARTBEAT"
    EVENT = "EVENT"
    ACK = "ACK"
    ERROR = "ERROR"


class CausalMetadata(BaseModel):
    """Where a message sits in its causal chain."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    origin: str
    """Agent that started the chain (the root request's sender)."""
    version: str = PROTOCOL_VERSION
    """A2A protocol version of the sender."""
    timestamp_ms: int
    """Sender's wall clock when the envelope was signed, ms since the epoch."""
    request_id: str
    """Root of the chain: the id every message of one conversation shares (a job's id)."""
    parent_request_id: str | None
    """Id of the envelope this one answers or continues; None for a root request."""
    sequence_number: int = Field(ge=0)
    """Lamport clock of the sender: strictly increases along the causal chain."""


class Envelope(BaseModel):
    """A signed A2A message. Build with :class:`Signer`, check with :func:`verify`."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    type: MessageType = Field(strict=False)
    id: str
    sender: str
    recipient: str
    payload: dict[str, JsonValue]
    causal: CausalMetadata
    expires_at_ms: int
    """Signer's clock at signing plus the TTL, ms; :func:`verify` allows for clock skew."""
    key_id: str
    signature: str

    def to_wire(self) -> dict[str, Any]:
        """Return the JSON-ready dict that rides as a Celery argument."""
        return self.model_dump(mode="json")

    def brief(self) -> str:
        """A short description for logs and Flower (``argsrepr``): no payload, no signature."""
        return f"[<{self.type.value} {self.id} {self.sender}->{self.recipient}>]"


def canonical_bytes(data: Mapping[str, Any]) -> bytes:
    """Render every field but ``signature`` in the one canonical JSON form.

    Raises:
        TypeError, ValueError: the data holds something JSON cannot carry
            (NaN, Infinity, objects that are not JSON types).
    """
    body = {key: value for key, value in data.items() if key != "signature"}
    return json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def _mac(secret: bytes, body: bytes) -> str:
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


class Keyring:
    """A2A signing keys by key id. The first key signs; every key verifies.

    Secrets never appear in ``repr``, ``str``, logs or error messages.
    """

    __slots__ = ("_secrets", "active_key_id")

    def __init__(self, secrets: Mapping[str, bytes]) -> None:
        if not secrets:
            raise ConfigurationError("A2A keyring is empty")
        self._secrets = dict(secrets)
        self.active_key_id = next(iter(self._secrets))

    @classmethod
    def parse(cls, spec: str, *, dev_mode: bool = False) -> Keyring:
        """Parse ``key_id:secret[,key_id:secret...]``.

        Raises:
            ConfigurationError: a pair is malformed, a key id repeats, or (outside
                development mode) a secret is shorter than 32 bytes.
        """
        secrets: dict[str, bytes] = {}
        for position, pair in enumerate(p.strip() for p in spec.split(",") if p.strip()):
            key_id, sep, secret = pair.partition(":")
            if not sep or not _KEY_ID_RE.fullmatch(key_id) or not secret:
                raise ConfigurationError(
                    f"AGENTS_A2A_KEYS entry {position + 1} is not 'key_id:secret' "
                    "(key id: letters, digits, '_', '.', '-')"
                )
            if key_id in secrets:
                raise ConfigurationError(f"AGENTS_A2A_KEYS repeats key id {key_id!r}")
            raw = secret.encode("utf-8")
            if len(raw) < MIN_SECRET_BYTES and not dev_mode:
                raise ConfigurationError(
                    f"A2A key {key_id!r} is {len(raw)} bytes; at least {MIN_SECRET_BYTES} "
                    "are required"
                )
            secrets[key_id] = raw
        if not secrets:
            raise ConfigurationError("AGENTS_A2A_KEYS holds no key")
        return cls(secrets)

    @classmethod
    def from_settings(cls, settings: Settings) -> Keyring:
        """Build the keyring a deployment runs with.

        Raises:
            ConfigurationError: no key is set outside development mode, or a key is unsafe.
        """
        if settings.a2a_keys is None or not settings.a2a_keys.get_secret_value().strip():
            if settings.dev_mode:
                return cls({DEV_KEY_ID: _DEV_SECRET})
            raise ConfigurationError(
                "AGENTS_A2A_KEYS is not set; set key_id:secret pairs (secrets of at least "
                "32 bytes) or AGENTS_DEV_MODE=true for local development"
            )
        return cls.parse(settings.a2a_keys.get_secret_value(), dev_mode=settings.dev_mode)

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Every key id that verifies, the active one first."""
        return tuple(self._secrets)

    def secret(self, key_id: str) -> bytes:
        """Return the secret of ``key_id``.

        Raises:
            UnknownKeyError: the key id is not in the keyring.
        """
        try:
            return self._secrets[key_id]
        except KeyError:
            raise UnknownKeyError(f"unknown A2A key id {key_id[:64]!r}") from None

    def __repr__(self) -> str:
        return f"Keyring(active={self.active_key_id!r}, key_ids={list(self._secrets)!r})"


class LamportClock:
    """A thread-safe Lamport clock: the sender's sequence numbers."""

    __slots__ = ("_lock", "_value")

    def __init__(self) -> None:
        self._value = 0
        self._lock = threading.Lock()

    def tick(self, observed: int = 0) -> int:
        """Advance past ``observed`` (the sequence number just received) and return."""
        with self._lock:
            self._value = max(self._value, observed) + 1
            return self._value


def now_ms() -> int:
    """Wall clock in integer milliseconds, the unit of every envelope timestamp."""
    return time.time_ns() // 1_000_000


class Signer:
    """Builds signed envelopes for one agent process: new requests and replies."""

    def __init__(self, keyring: Keyring, *, ttl_s: float, clock: LamportClock | None = None):
        self.keyring = keyring
        self.ttl_ms = int(ttl_s * 1000)
        self.clock = clock or LamportClock()

    def sign(
        self,
        type: MessageType,
        *,
        sender: str,
        recipient: str,
        payload: Mapping[str, Any],
        origin: str,
        request_id: str,
        parent_request_id: str | None,
        observed_sequence: int = 0,
        ttl_ms: int | None = None,
    ) -> Envelope:
        """Sign a new envelope with the active key."""
        issued = now_ms()
        key_id = self.keyring.active_key_id
        fields: dict[str, Any] = {
            "type": type.value,
            "id": uuid.uuid4().hex,
            "sender": sender,
            "recipient": recipient,
            "payload": dict(payload),
            "causal": {
                "origin": origin,
                "version": PROTOCOL_VERSION,
                "timestamp_ms": issued,
                "request_id": request_id,
                "parent_request_id": parent_request_id,
                "sequence_number": self.clock.tick(observed_sequence),
            },
            "expires_at_ms": issued + (self.ttl_ms if ttl_ms is None else ttl_ms),
            "key_id": key_id,
        }
        fields["signature"] = _mac(self.keyring.secret(key_id), canonical_bytes(fields))
        envelope = Envelope.model_validate(fields)
        metrics.count_signed(type.value)
        return envelope

    def request(
        self,
        *,
        sender: str,
        recipient: str,
        payload: Mapping[str, Any],
        request_id: str | None = None,
        parent: Envelope | None = None,
    ) -> Envelope:
        """A REQUEST: a new root (``parent`` None) or the next hop of ``parent``'s chain."""
        if parent is None:
            root = request_id or uuid.uuid4().hex
            return self.sign(
                MessageType.REQUEST,
                sender=sender,
                recipient=recipient,
                payload=payload,
                origin=sender,
                request_id=root,
                parent_request_id=None,
            )
        return self.reply(parent, MessageType.REQUEST, payload, sender=sender, recipient=recipient)

    def reply(
        self,
        request: Envelope,
        type: MessageType,
        payload: Mapping[str, Any],
        *,
        sender: str,
        recipient: str | None = None,
    ) -> Envelope:
        """An envelope that continues ``request``'s causal chain.

        Same ``request_id`` root and origin, ``parent_request_id`` = the request's id,
        and the sender's next sequence number (past the request's).
        """
        return self.sign(
            type,
            sender=sender,
            recipient=request.sender if recipient is None else recipient,
            payload=payload,
            origin=request.causal.origin,
            request_id=request.causal.request_id,
            parent_request_id=request.id,
            observed_sequence=request.causal.sequence_number,
        )


def verify(
    raw: object,
    keyring: Keyring,
    *,
    max_bytes: int,
    at_ms: int | None = None,
    skew_ms: int = 0,
) -> Envelope:
    """Check an envelope's shape, size, key, signature, types and time.

    Replays are refused by the hops, from the job record (:func:`project.core.runtime.replay_of`).
    Reads no settings: the caller passes its limits.

    Args:
        raw: What arrived: a dict (Celery argument) or JSON text/bytes.
        keyring: The keys that verify.
        max_bytes: Bounds the payload; the envelope may be that plus a fixed overhead.
        at_ms: The verifier's clock, ms since the epoch (default: now).
        skew_ms: How far the signer's clock may be from the verifier's, either way
            (``AGENTS_ENVELOPE_CLOCK_SKEW_S``). The envelope is refused only if
            ``expires_at_ms + skew_ms <= at_ms`` (expired) or
            ``causal.timestamp_ms > at_ms + skew_ms`` (signed in the future).

    Raises:
        MalformedEnvelopeError, UnknownKeyError, SignatureError,
        ExpiredEnvelopeError (outside its validity window, either way).
        ValueError: ``skew_ms`` is negative.
    """
    if skew_ms < 0:
        raise ValueError(f"skew_ms must not be negative, got {skew_ms}")
    if isinstance(raw, str | bytes | bytearray):
        if len(raw) > max_bytes + ENVELOPE_OVERHEAD_BYTES:
            raise MalformedEnvelopeError("envelope is over the size limit")
        try:
            raw = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise MalformedEnvelopeError(f"envelope is not valid JSON: {exc.args[0]}") from None
    if not isinstance(raw, dict):
        raise MalformedEnvelopeError(f"envelope must be a JSON object, got {type(raw).__name__}")
    key_id, signature = raw.get("key_id"), raw.get("signature")
    if not isinstance(key_id, str) or not isinstance(signature, str):
        raise MalformedEnvelopeError("envelope needs string 'key_id' and 'signature' fields")
    secret = keyring.secret(key_id)
    try:
        body = canonical_bytes(raw)
    except (TypeError, ValueError) as exc:
        raise MalformedEnvelopeError(f"envelope is not canonical JSON: {exc}") from None
    if len(body) > max_bytes:  # only then is the payload's own size worth measuring
        payload_size = len(canonical_bytes({"payload": raw.get("payload")}))
        if payload_size > max_bytes or len(body) > max_bytes + ENVELOPE_OVERHEAD_BYTES:
            raise MalformedEnvelopeError(
                f"envelope payload is {payload_size} bytes, over the limit of {max_bytes}"
            )
    # compare_digest raises TypeError on non-ASCII str; such a signature is simply wrong.
    if not signature.isascii() or not hmac.compare_digest(_mac(secret, body), signature):
        raise SignatureError(f"bad signature on envelope signed with key {key_id!r}")
    try:
        envelope = Envelope.model_validate(raw)
    except ValidationError as exc:
        raise MalformedEnvelopeError(
            f"envelope fields have wrong types or are missing: {invalid_fields(exc)}"
        ) from None
    _check_time(envelope, now_ms() if at_ms is None else at_ms, skew_ms)
    metrics.count_verified(envelope.type.value)
    return envelope


def _check_time(envelope: Envelope, at_ms: int, skew_ms: int) -> None:
    """Refuse an envelope outside its validity window, widened by ``skew_ms`` each way."""
    if envelope.expires_at_ms + skew_ms <= at_ms:
        raise LapsedEnvelopeError(
            f"envelope {envelope.id} expired at {envelope.expires_at_ms}, "
            f"{at_ms - envelope.expires_at_ms} ms ago by this agent's clock "
            f"(clock skew allowed: {skew_ms} ms)",
            envelope,
        )
    signed_ms = envelope.causal.timestamp_ms
    if signed_ms > at_ms + skew_ms:
        raise ExpiredEnvelopeError(
            f"envelope {envelope.id} was signed at {signed_ms}, {signed_ms - at_ms} ms ahead "
            f"of this agent's clock (clock skew allowed: {skew_ms} ms): the signer's clock "
            "is ahead, or this agent's is behind"
        )
