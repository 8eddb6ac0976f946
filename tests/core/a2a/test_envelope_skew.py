"""Envelope time checks with clocks that disagree: the skew allowance of ``verify`` (no Redis).

The rule: an envelope is refused as expired only when ``expires_at_ms + skew_ms <= now``
and as signed in the future only when ``causal.timestamp_ms > now + skew_ms``, where
``now`` is the verifier's clock and ``timestamp_ms``/``expires_at_ms`` the signer's.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from support.envelopes import bare_envelope

from project.core.a2a import envelope as envelope_module
from project.core.a2a.envelope import Envelope, Keyring, MessageType, Signer, verify
from project.core.errors import ExpiredEnvelopeError, SignatureError
from project.core.settings import Settings, get_settings

KEYRING = Keyring.parse("k1:" + "s" * 40)
MAX_BYTES = 64 * 1024
TRUE_NOW_MS = 1_800_000_000_000
"""The true time at which every test signs, ms since the epoch."""
TTL_S = 20.0
TTL_MS = 20_000
SKEW_MS = 60_000


def signed_at(signer_clock_ms: int, monkeypatch: pytest.MonkeyPatch) -> Envelope:
    """A REQUEST signed by an agent whose clock reads ``signer_clock_ms``."""
    monkeypatch.setattr(envelope_module, "now_ms", lambda: signer_clock_ms)
    envelope = Signer(KEYRING, ttl_s=TTL_S).request(
        sender="w1", recipient="distributor", payload={"job_id": "j1"}
    )
    monkeypatch.undo()
    return envelope


def check(envelope: Envelope, at_ms: int, **kwargs: Any) -> Envelope:
    return verify(envelope.to_wire(), KEYRING, max_bytes=MAX_BYTES, at_ms=at_ms, **kwargs)


@pytest.fixture
def envelope(monkeypatch: pytest.MonkeyPatch) -> Envelope:
    made = signed_at(TRUE_NOW_MS, monkeypatch)
    assert made.causal.timestamp_ms == TRUE_NOW_MS
    assert made.expires_at_ms == TRUE_NOW_MS + TTL_MS
    return made


# --- the boundaries ---------------------------------------------------------------


def test_without_skew_the_rule_is_the_plain_expiry(envelope: Envelope) -> None:
    assert check(envelope, envelope.expires_at_ms - 1) == envelope
    with pytest.raises(ExpiredEnvelopeError, match=envelope.id):
        check(envelope, envelope.expires_at_ms)


def test_expired_only_once_expiry_plus_skew_has_passed(envelope: Envelope) -> None:
    last_accepted = envelope.expires_at_ms + SKEW_MS - 1
    assert check(envelope, last_accepted, skew_ms=SKEW_MS) == envelope
    with pytest.raises(ExpiredEnvelopeError, match=rf"{envelope.id} expired .*60000 ms"):
        check(envelope, last_accepted + 1, skew_ms=SKEW_MS)


def test_signed_in_the_future_is_refused_beyond_the_skew(envelope: Envelope) -> None:
    signed = envelope.causal.timestamp_ms
    # The verifier's clock is behind the signer's by exactly the skew: still accepted.
    assert check(envelope, signed - SKEW_MS, skew_ms=SKEW_MS) == envelope
    with pytest.raises(ExpiredEnvelopeError, match=rf"{envelope.id} was signed at {signed}"):
        check(envelope, signed - SKEW_MS - 1, skew_ms=SKEW_MS)


def test_without_skew_any_envelope_from_the_future_is_refused(envelope: Envelope) -> None:
    assert check(envelope, envelope.causal.timestamp_ms) == envelope
    with pytest.raises(ExpiredEnvelopeError, match="1 ms ahead of this agent's clock"):
        check(envelope, envelope.causal.timestamp_ms - 1)


def test_a_negative_skew_is_a_programming_error(envelope: Envelope) -> None:
    with pytest.raises(ValueError, match="skew_ms"):
        check(envelope, TRUE_NOW_MS, skew_ms=-1)


def test_the_time_check_comes_after_the_signature(envelope: Envelope) -> None:
    """Moving the signing time back into the window breaks the signature: it is signed."""
    wire = envelope.to_wire()
    wire["causal"]["timestamp_ms"] -= 3_600_000
    with pytest.raises(SignatureError):
        verify(wire, KEYRING, max_bytes=MAX_BYTES, at_ms=TRUE_NOW_MS - 3_600_000)


# --- agents 45 s apart, with a 20 s TTL (the integration test's setting) -----------------


@pytest.mark.parametrize(
    ("signer_offset_s", "verifier_offset_s"),
    [(-45, 0), (+45, 0), (0, -45), (0, +45)],
    ids=["signer-behind", "signer-ahead", "verifier-behind", "verifier-ahead"],
)
def test_clocks_45_s_apart_need_the_allowance(
    monkeypatch: pytest.MonkeyPatch, signer_offset_s: int, verifier_offset_s: int
) -> None:
    """A skewed worker and a true-clock tier, either way round: 45 s is more than the TTL."""
    envelope = signed_at(TRUE_NOW_MS + signer_offset_s * 1000, monkeypatch)
    for delay_ms in (0, 1_000, TTL_MS - 1):  # delivered within its TTL of real time
        verifier_clock = TRUE_NOW_MS + delay_ms + verifier_offset_s * 1000
        assert check(envelope, verifier_clock, skew_ms=SKEW_MS) == envelope
        with pytest.raises(ExpiredEnvelopeError):
            check(envelope, verifier_clock)


def test_clocks_further_apart_than_the_skew_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two agents 45 s either side of true time are 90 s apart: beyond a 60 s allowance."""
    behind = signed_at(TRUE_NOW_MS - 45_000, monkeypatch)
    with pytest.raises(ExpiredEnvelopeError, match="expired"):
        check(behind, TRUE_NOW_MS + 45_000, skew_ms=SKEW_MS)
    ahead = signed_at(TRUE_NOW_MS + 45_000, monkeypatch)
    with pytest.raises(ExpiredEnvelopeError, match="signed at"):
        check(ahead, TRUE_NOW_MS - 45_000, skew_ms=SKEW_MS)


# --- the rule and the tolerance, for any clocks --------------------------------------


@given(
    signer_offset_ms=st.integers(-(10**7), 10**7),
    verifier_offset_ms=st.integers(-(10**7), 10**7),
    delay_ms=st.integers(0, 10**7),
    ttl_ms=st.integers(1, 10**7),
    skew_ms=st.integers(0, 10**7),
)
def test_the_rule_for_any_clocks(
    signer_offset_ms: int, verifier_offset_ms: int, delay_ms: int, ttl_ms: int, skew_ms: int
) -> None:
    signed_ms = TRUE_NOW_MS + signer_offset_ms
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(envelope_module, "now_ms", lambda: signed_ms)
        envelope = bare_envelope(
            Signer(KEYRING, ttl_s=TTL_S),
            MessageType.REQUEST,
            sender="w1",
            recipient="distributor",
            ttl_ms=ttl_ms,
        )
    verifier_ms = TRUE_NOW_MS + delay_ms + verifier_offset_ms
    expired = envelope.expires_at_ms + skew_ms <= verifier_ms
    from_the_future = envelope.causal.timestamp_ms > verifier_ms + skew_ms
    if expired or from_the_future:
        with pytest.raises(ExpiredEnvelopeError):
            check(envelope, verifier_ms, skew_ms=skew_ms)
    else:
        assert check(envelope, verifier_ms, skew_ms=skew_ms) == envelope
    # The stated tolerance: clocks within the skew never refuse an envelope delivered
    # within its TTL, and none is accepted for longer than TTL + 2 x skew of real time.
    if abs(signer_offset_ms - verifier_offset_ms) <= skew_ms and delay_ms < ttl_ms:
        assert not (expired or from_the_future)
    if delay_ms >= ttl_ms + 2 * skew_ms and abs(signer_offset_ms - verifier_offset_ms) <= skew_ms:
        assert expired


# --- the setting -------------------------------------------------------------------


def test_the_setting_defaults_to_60_s_and_reads_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AGENTS_ENVELOPE_CLOCK_SKEW_S", raising=False)
    assert Settings(_env_file=None).envelope_clock_skew_s == 60.0  # type: ignore[call-arg]
    monkeypatch.setenv("AGENTS_ENVELOPE_CLOCK_SKEW_S", "2.5")
    settings = Settings(_env_file=None)
    assert int(settings.envelope_clock_skew_s * 1000) == 2_500
    monkeypatch.setenv("AGENTS_ENVELOPE_CLOCK_SKEW_S", "-1")
    with pytest.raises(ValidationError, match="envelope_clock_skew_s"):
        Settings(_env_file=None)


def test_verify_reads_no_settings(envelope: Envelope, monkeypatch: pytest.MonkeyPatch) -> None:
    """The allowance is the caller's to pass: a huge configured skew changes nothing here."""
    monkeypatch.setenv("AGENTS_ENVELOPE_CLOCK_SKEW_S", "86400")
    get_settings.cache_clear()
    try:
        assert get_settings().envelope_clock_skew_s == 86_400
        with pytest.raises(ExpiredEnvelopeError):
            check(envelope, envelope.expires_at_ms)
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
