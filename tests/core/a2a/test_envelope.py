"""Unit tests of A2A envelopes: canonical form, signing, keys, typed rejections (no Redis)."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
from typing import Any

import pytest
from kombu.utils.json import dumps as kombu_dumps
from kombu.utils.json import loads as kombu_loads
from support.envelopes import bare_envelope

from project.core.a2a.envelope import (
    DEV_KEY_ID,
    MIN_SECRET_BYTES,
    Envelope,
    Keyring,
    LamportClock,
    MessageType,
    Signer,
    canonical_bytes,
    verify,
)
from project.core.errors import (
    A2AError,
    AgentsError,
    ConfigurationError,
    ExpiredEnvelopeError,
    MalformedEnvelopeError,
    SignatureError,
    UnknownKeyError,
)
from project.core.settings import Settings

SECRET_NEW = "NEWsecret-7f3a9c1e-b2d4-4e6f-8a0b-c9d8e7f6a5b4"
SECRET_OLD = "OLDsecret-0e1d2c3b-4a59-4687-9786-a5b4c3d2e1f0"
MAX_BYTES = 64 * 1024


def make_keyring(spec: str = f"k-new:{SECRET_NEW},k-old:{SECRET_OLD}") -> Keyring:
    return Keyring.parse(spec)


def make_signer(keyring: Keyring | None = None, *, ttl_s: float = 60.0) -> Signer:
    return Signer(keyring or make_keyring(), ttl_s=ttl_s)


def make_request(signer: Signer, payload: dict[str, Any] | None = None) -> Envelope:
    return signer.request(
        sender="coordinator",
        recipient="distributor",
        payload={"task_type": "compute", "values": [1, 2.5, "x"]} if payload is None else payload,
    )


def resign(wire: dict[str, Any], keyring: Keyring) -> dict[str, Any]:
    """Sign ``wire`` as it stands (even if malformed), as a key holder could."""
    body = canonical_bytes(wire)
    wire["signature"] = hmac.new(keyring.secret(wire["key_id"]), body, hashlib.sha256).hexdigest()
    return wire


def check(raw: object, keyring: Keyring, **kwargs: Any) -> Envelope:
    return verify(raw, keyring, max_bytes=kwargs.pop("max_bytes", MAX_BYTES), **kwargs)


# --- canonical form ------------------------------------------------------------


def test_canonical_sorts_keys_at_every_level_and_has_no_whitespace() -> None:
    data = {"b": 1, "a": {"d": [1, {"z": None, "y": True}], "c": "x y"}, "signature": "ignored"}
    assert canonical_bytes(data) == b'{"a":{"c":"x y","d":[1,{"y":true,"z":null}]},"b":1}'


def test_canonical_ignores_insertion_order_and_the_signature() -> None:
    one = {"x": 1, "y": {"p": 1, "q": 2}}
    two = {"y": {"q": 2, "p": 1}, "x": 1, "signature": "abc"}
    assert canonical_bytes(one) == canonical_bytes(two)


def test_canonical_escapes_unicode_to_ascii() -> None:
    rendered = canonical_bytes({"s": "é☃😀\n\x00"})
    assert rendered == b'{"s":"\\u00e9\\u2603\\ud83d\\ude00\\n\\u0000"}'
    assert rendered.isascii()


def test_canonical_renders_numbers_in_one_stable_way() -> None:
    data = {"big": 10**20, "neg": -7, "f": 0.1, "tiny": 1e-7, "one": 1.0, "z": -0.0, "e": 1e300}
    rendered = canonical_bytes(data)
    assert rendered == (
        b'{"big":100000000000000000000,"e":1e+300,"f":0.1,"neg":-7,"one":1.0,"tiny":1e-07,"z":-0.0}'
    )
    # A fixed point of a JSON round trip: ints stay ints, floats stay floats.
    assert canonical_bytes(json.loads(rendered)) == rendered
    assert canonical_bytes(kombu_loads(kombu_dumps(data))) == rendered


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_canonical_refuses_nan_and_infinity(bad: float) -> None:
    with pytest.raises(ValueError):
        canonical_bytes({"x": bad})


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_verify_refuses_nan_in_a_dict(bad: float) -> None:
    keyring = make_keyring()
    wire = make_request(make_signer(keyring)).to_wire()
    wire["payload"]["x"] = bad
    with pytest.raises(MalformedEnvelopeError, match="canonical"):
        check(wire, keyring)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_verify_refuses_nan_in_json_text(literal: str) -> None:
    keyring = make_keyring()
    wire = make_request(make_signer(keyring), {"x": 1}).to_wire()
    text = json.dumps(wire).replace('"x": 1', f'"x": {literal}')
    assert literal in text
    with pytest.raises(MalformedEnvelopeError):
        check(text, keyring)


# --- signing and verifying -----------------------------------------------------


def test_sign_then_verify_round_trip() -> None:
    keyring = make_keyring()
    envelope = make_request(make_signer(keyring))
    assert envelope.key_id == "k-new"
    assert len(envelope.signature) == 64
    assert envelope.causal.parent_request_id is None
    assert envelope.causal.origin == "coordinator"
    verified = check(envelope.to_wire(), keyring)
    assert verified == envelope
    # The verified model renders back to the very same wire form.
    assert verified.to_wire() == envelope.to_wire()
    assert check(verified.to_wire(), keyring) == envelope


def test_signature_is_hmac_sha256_of_the_canonical_form() -> None:
    keyring = make_keyring()
    wire = make_request(make_signer(keyring)).to_wire()
    expected = hmac.new(SECRET_NEW.encode(), canonical_bytes(wire), hashlib.sha256).hexdigest()
    assert wire["signature"] == expected


@pytest.mark.parametrize(
    ("dumps", "loads"),
    [(json.dumps, json.loads), (kombu_dumps, kombu_loads)],
    ids=["json", "kombu"],
)
def test_json_round_trip_still_verifies(dumps: Any, loads: Any) -> None:
    keyring = make_keyring()
    payload = {
        "text": 'héllo ☃ 😀 "quoted" \\ back',
        "ints": [0, -1, 2**63, 10**30],
        "floats": [0.1, 1.0, -0.0, 1e-300, 1.7976931348623157e308, 2.5],
        "nested": {"z": {"y": [None, True, False, {}]}, "a": []},
        "": "empty key",
    }
    envelope = make_request(make_signer(keyring), payload)
    wire = envelope.to_wire()
    back = loads(dumps(wire))
    assert check(back, keyring) == envelope
    # Celery also hands over JSON text; verify accepts str and bytes.
    assert check(dumps(wire), keyring) == envelope
    assert check(dumps(wire).encode("utf-8"), keyring) == envelope


def test_verify_accepts_pretty_printed_and_reordered_json() -> None:
    keyring = make_keyring()
    envelope = make_request(make_signer(keyring))
    wire = envelope.to_wire()
    reordered = dict(reversed(list(wire.items())))
    text = json.dumps(reordered, indent=4, ensure_ascii=False)
    assert check(text, keyring) == envelope


def test_tampered_payload_is_refused() -> None:
    keyring = make_keyring()
    wire = make_request(make_signer(keyring)).to_wire()
    wire["payload"]["values"][0] = 2
    with pytest.raises(SignatureError, match="bad signature"):
        check(wire, keyring)


@pytest.mark.parametrize("bad_char", ["é", "\u2603", "\x00", "G", "\ud800"])
def test_odd_signature_characters_give_signature_error(bad_char: str) -> None:
    keyring = make_keyring()
    wire = make_request(make_signer(keyring)).to_wire()
    wire["signature"] = bad_char + wire["signature"][1:]
    with pytest.raises(SignatureError):
        check(wire, keyring)


def test_signature_of_wrong_length_is_refused() -> None:
    keyring = make_keyring()
    wire = make_request(make_signer(keyring)).to_wire()
    for signature in ("", wire["signature"][:-1], wire["signature"] + "0"):
        with pytest.raises(SignatureError):
            check({**wire, "signature": signature}, keyring)


# --- reply() and the causal chain ---------------------------------------------


def test_reply_carries_the_causal_chain() -> None:
    keyring = make_keyring()
    coordinator = make_signer(keyring)
    worker = make_signer(keyring)  # its own clock, starting at zero
    for _ in range(5):
        request = make_request(coordinator)
    assert request.causal.sequence_number == 5

    response = worker.reply(request, MessageType.RESPONSE, {"result": 6}, sender="worker.w1")
    assert response.type is MessageType.RESPONSE
    assert response.causal.request_id == request.causal.request_id
    assert response.causal.origin == request.causal.origin
    assert response.causal.parent_request_id == request.id
    assert response.causal.sequence_number > request.causal.sequence_number
    assert response.recipient == request.sender
    assert response.sender == "worker.w1"
    assert response.id != request.id
    assert check(response.to_wire(), keyring) == response


@pytest.mark.parametrize(
    "kind", [MessageType.RESPONSE, MessageType.ACK, MessageType.ERROR, MessageType.EVENT]
)
def test_every_reply_kind_continues_the_chain(kind: MessageType) -> None:
    signer = make_signer()
    request = make_request(signer)
    reply = signer.reply(request, kind, {}, sender="distributor", recipient="coordinator")
    assert reply.type is kind
    assert reply.recipient == "coordinator"
    assert reply.causal.request_id == request.causal.request_id
    assert reply.causal.parent_request_id == request.id
    assert reply.causal.sequence_number > request.causal.sequence_number


def test_chain_of_hops_keeps_its_root_and_increasing_sequence() -> None:
    keyring = make_keyring()
    app, coordinator, distributor = make_signer(keyring), make_signer(keyring), make_signer(keyring)
    distributor.clock.tick(1000)  # a sender whose own clock is far ahead
    root = app.request(sender="app", recipient="coordinator", payload={}, request_id="job-1")
    hop1 = coordinator.request(
        sender="coordinator", recipient="distributor", payload={}, parent=root
    )
    hop2 = distributor.request(sender="distributor", recipient="worker.w1", payload={}, parent=hop1)
    back = app.reply(hop2, MessageType.RESPONSE, {}, sender="worker.w1")
    chain = [root, hop1, hop2, back]
    assert {e.causal.request_id for e in chain} == {"job-1"}
    assert {e.causal.origin for e in chain} == {"app"}
    assert [e.causal.parent_request_id for e in chain] == [None, root.id, hop1.id, hop2.id]
    sequence = [e.causal.sequence_number for e in chain]
    assert sequence == sorted(set(sequence)), sequence
    assert hop2.causal.sequence_number > 1000
    assert hop1.type is MessageType.REQUEST


def test_lamport_clock_moves_past_what_it_observes() -> None:
    clock = LamportClock()
    assert clock.tick() == 1
    assert clock.tick(observed=10) == 11
    assert clock.tick(observed=3) == 12


# --- keyring -------------------------------------------------------------------


def test_first_key_signs_and_every_key_verifies() -> None:
    keyring = make_keyring()
    assert keyring.active_key_id == "k-new"
    assert keyring.key_ids == ("k-new", "k-old")
    assert keyring.secret("k-old") == SECRET_OLD.encode()
    old_only = Keyring.parse(f"k-old:{SECRET_OLD}")
    old_envelope = make_request(make_signer(old_only))
    assert old_envelope.key_id == "k-old"
    assert check(old_envelope.to_wire(), keyring) == old_envelope


def test_key_rotation_overlap() -> None:
    old_envelope = make_request(make_signer(Keyring.parse(f"k-old:{SECRET_OLD}")))
    rotating = Keyring.parse(f"k-new:{SECRET_NEW},k-old:{SECRET_OLD}")
    assert check(old_envelope.to_wire(), rotating) == old_envelope
    rotated = Keyring.parse(f"k-new:{SECRET_NEW}")
    with pytest.raises(UnknownKeyError, match="k-old"):
        check(old_envelope.to_wire(), rotated)
    # During the overlap, peers still on [old, new] verify what the new key signs.
    new_envelope = make_request(make_signer(rotating))
    lagging = Keyring.parse(f"k-old:{SECRET_OLD},k-new:{SECRET_NEW}")
    assert check(new_envelope.to_wire(), lagging) == new_envelope


def test_same_key_id_with_another_secret_is_a_bad_signature() -> None:
    envelope = make_request(make_signer(Keyring.parse(f"k-new:{SECRET_NEW}")))
    impostor = Keyring.parse(f"k-new:{SECRET_OLD}")
    with pytest.raises(SignatureError):
        check(envelope.to_wire(), impostor)


def test_unknown_key_id_is_refused() -> None:
    keyring = make_keyring()
    wire = make_request(make_signer(keyring)).to_wire()
    wire["key_id"] = "k-other"
    with pytest.raises(UnknownKeyError, match="k-other"):
        check(wire, keyring)
    with pytest.raises(UnknownKeyError):
        keyring.secret("nope")


def test_secret_length_is_counted_in_bytes() -> None:
    assert Keyring.parse("k:" + "s" * MIN_SECRET_BYTES).key_ids == ("k",)
    assert (
        Keyring.parse("k:" + "é" * (MIN_SECRET_BYTES // 2)).secret("k")
        == ("é" * (MIN_SECRET_BYTES // 2)).encode()
    )
    with pytest.raises(ConfigurationError, match="31 bytes"):
        Keyring.parse("k:" + "s" * (MIN_SECRET_BYTES - 1))


def test_short_secret_only_in_dev_mode() -> None:
    with pytest.raises(ConfigurationError):
        Keyring.parse("k:short")
    keyring = Keyring.parse("k:short", dev_mode=True)
    envelope = make_request(make_signer(keyring))
    assert check(envelope.to_wire(), keyring) == envelope


def test_secret_may_contain_colons_and_pairs_are_trimmed() -> None:
    secret = "a:b:" + "c" * 40
    keyring = Keyring.parse(f"  k1:{secret} , k2:{SECRET_OLD} ,")
    assert keyring.key_ids == ("k1", "k2")
    assert keyring.secret("k1") == secret.encode()


def test_duplicate_key_ids_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="repeats"):
        Keyring.parse(f"k1:{SECRET_NEW},k1:{SECRET_OLD}")


@pytest.mark.parametrize(
    "spec",
    [
        "",
        " , ,",
        SECRET_NEW,
        f":{SECRET_NEW}",
        "k1:",
        f"bad id:{SECRET_NEW}",
        f"k1/x:{SECRET_NEW}",
        f"k1\n:{SECRET_NEW}",
        f"{'k' * 65}:{SECRET_NEW}",
        f"k1:{SECRET_NEW},{SECRET_OLD}",
    ],
)
def test_malformed_spec_is_refused(spec: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Keyring.parse(spec, dev_mode=True)
    assert SECRET_NEW not in str(caught.value)
    assert SECRET_OLD not in str(caught.value)


def test_empty_keyring_is_refused() -> None:
    with pytest.raises(ConfigurationError):
        Keyring({})


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


@pytest.mark.parametrize("keys", [None, "", "   "])
def test_from_settings_refuses_missing_keys_outside_dev_mode(keys: str | None) -> None:
    with pytest.raises(ConfigurationError, match="AGENTS_A2A_KEYS"):
        Keyring.from_settings(settings(a2a_keys=keys, dev_mode=False))


def test_from_settings_dev_mode_gives_a_dev_key() -> None:
    keyring = Keyring.from_settings(settings(a2a_keys=None, dev_mode=True))
    assert keyring.key_ids == (DEV_KEY_ID,)
    assert len(keyring.secret(DEV_KEY_ID)) >= MIN_SECRET_BYTES
    envelope = make_request(make_signer(keyring))
    assert envelope.key_id == DEV_KEY_ID
    assert check(envelope.to_wire(), keyring) == envelope


def test_from_settings_uses_configured_keys() -> None:
    keyring = Keyring.from_settings(settings(a2a_keys=f"k-new:{SECRET_NEW},k-old:{SECRET_OLD}"))
    assert keyring.key_ids == ("k-new", "k-old")
    with pytest.raises(ConfigurationError):
        Keyring.from_settings(settings(a2a_keys="k:short", dev_mode=False))
    assert Keyring.from_settings(settings(a2a_keys="k:short", dev_mode=True)).key_ids == ("k",)


def test_from_settings_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTS_A2A_KEYS", f"env-k:{SECRET_NEW}")
    monkeypatch.setenv("AGENTS_DEV_MODE", "false")
    assert Keyring.from_settings(settings()).key_ids == ("env-k",)
    monkeypatch.delenv("AGENTS_A2A_KEYS")
    with pytest.raises(ConfigurationError):
        Keyring.from_settings(settings())


# --- secrets never leak ---------------------------------------------------------


def test_secrets_are_not_in_keyring_repr() -> None:
    keyring = make_keyring()
    for text in (repr(keyring), str(keyring), f"{keyring!r}"):
        assert "k-new" in text
        assert SECRET_NEW not in text
        assert SECRET_OLD not in text
    assert not hasattr(keyring, "__dict__")


def test_secrets_are_not_in_settings_repr() -> None:
    configured = settings(a2a_keys=f"k-new:{SECRET_NEW}")
    for text in (repr(configured), str(configured), configured.model_dump_json()):
        assert SECRET_NEW not in text
    assert configured.a2a_keys is not None
    assert SECRET_NEW in configured.a2a_keys.get_secret_value()


def test_secrets_are_not_in_error_messages() -> None:
    keyring = make_keyring()
    signer = make_signer(keyring)
    failures: list[AgentsError] = []
    for spec in (
        f"k1:{SECRET_NEW[:20]}",
        f"bad id:{SECRET_NEW}",
        f"k1:{SECRET_NEW},k1:{SECRET_OLD}",
    ):
        with pytest.raises(ConfigurationError) as config_error:
            Keyring.parse(spec)
        failures.append(config_error.value)
    wire = make_request(signer).to_wire()
    for raw in (
        {**wire, "payload": {"tampered": True}},
        {**wire, "key_id": "k-unknown"},
        {**wire, "expires_at_ms": 1},
        json.dumps(wire)[:-3],
    ):
        with pytest.raises(A2AError) as a2a_error:
            check(raw, keyring)
        failures.append(a2a_error.value)
    assert len(failures) == 7
    for failure in failures:
        for text in (str(failure), repr(failure), failure.message):
            assert SECRET_NEW not in text
            assert SECRET_NEW[:20] not in text
            assert SECRET_OLD not in text


# --- typed rejections ------------------------------------------------------------


def test_expired_envelope_is_refused() -> None:
    keyring = make_keyring()
    envelope = make_request(make_signer(keyring, ttl_s=30))
    wire = envelope.to_wire()
    lifetime = envelope.expires_at_ms - envelope.causal.timestamp_ms
    assert lifetime == 30_000
    assert check(wire, keyring, at_ms=envelope.expires_at_ms - 1) == envelope
    with pytest.raises(ExpiredEnvelopeError, match=envelope.id):
        check(wire, keyring, at_ms=envelope.expires_at_ms)
    with pytest.raises(ExpiredEnvelopeError):
        check(wire, keyring, at_ms=envelope.expires_at_ms + 3_600_000)


def test_already_expired_when_signed_is_refused_now() -> None:
    keyring = make_keyring()
    signer = make_signer(keyring)
    envelope = bare_envelope(signer, MessageType.EVENT, ttl_ms=-1)
    with pytest.raises(ExpiredEnvelopeError):
        check(envelope.to_wire(), keyring)


def test_oversize_payload_is_refused() -> None:
    keyring = make_keyring()
    limit = 10_000
    fits = make_request(make_signer(keyring), {"blob": "x" * (limit - 100)})
    assert check(fits.to_wire(), keyring, max_bytes=limit) == fits
    big = make_request(make_signer(keyring), {"blob": "x" * (limit + 10_000)})
    with pytest.raises(MalformedEnvelopeError, match="limit"):
        check(big.to_wire(), keyring, max_bytes=limit)
    with pytest.raises(MalformedEnvelopeError, match="limit"):
        check(json.dumps(big.to_wire()), keyring, max_bytes=limit)
    # Unicode escapes count: 5,000 snowmen are 30,000 canonical bytes.
    wide = make_request(make_signer(keyring), {"blob": "\u2603" * 5_000})
    with pytest.raises(MalformedEnvelopeError, match="limit"):
        check(wide.to_wire(), keyring, max_bytes=limit)


@pytest.mark.parametrize("raw", [None, 42, "x", [], ["a"], "[1, 2]", '"text"', b"42", "null"])
def test_not_an_object_is_malformed(raw: object) -> None:
    with pytest.raises(MalformedEnvelopeError):
        check(raw, make_keyring())


def test_truncated_or_undecodable_text_is_malformed() -> None:
    keyring = make_keyring()
    text = json.dumps(make_request(make_signer(keyring)).to_wire())
    assert check(text, keyring)
    for cut in (1, 2, len(text) // 2, len(text) - 1):
        with pytest.raises(MalformedEnvelopeError, match="not valid JSON"):
            check(text[:cut], keyring)
    for raw in (b"\xff\xfe{", b"", "", "{'single': 'quotes'}"):
        with pytest.raises(MalformedEnvelopeError):
            check(raw, keyring)


@pytest.mark.parametrize("field", ["key_id", "signature"])
def test_missing_or_non_string_key_id_or_signature_is_malformed(field: str) -> None:
    keyring = make_keyring()
    wire = make_request(make_signer(keyring)).to_wire()
    for value in (None, 1, ["k-new"], {"k": "v"}, True):
        with pytest.raises(MalformedEnvelopeError, match="key_id"):
            check({**wire, field: value}, keyring)
    del wire[field]
    with pytest.raises(MalformedEnvelopeError, match="key_id"):
        check(wire, keyring)


def _without(path: tuple[str, ...]) -> Any:
    def change(wire: dict[str, Any]) -> None:
        target = wire
        for part in path[:-1]:
            target = target[part]
        del target[path[-1]]

    return change


def _setting(path: tuple[str, ...], value: Any) -> Any:
    def change(wire: dict[str, Any]) -> None:
        target = wire
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value

    return change


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (_without(("id",)), "id"),
        (_without(("recipient",)), "recipient"),
        (_without(("payload",)), "payload"),
        (_without(("causal",)), "causal"),
        (_without(("causal", "request_id")), "causal.request_id"),
        (_without(("expires_at_ms",)), "expires_at_ms"),
        (_setting(("type",), "BOGUS"), "type"),
        (_setting(("type",), 1), "type"),
        (_setting(("id",), 123), "id"),
        (_setting(("sender",), None), "sender"),
        (_setting(("payload",), ["not", "an", "object"]), "payload"),
        (_setting(("payload",), "text"), "payload"),
        (_setting(("causal",), "x"), "causal"),
        (_setting(("causal", "timestamp_ms"), "1700000000000"), "causal.timestamp_ms"),
        (_setting(("causal", "timestamp_ms"), 1.5), "causal.timestamp_ms"),
        (_setting(("causal", "sequence_number"), -1), "causal.sequence_number"),
        (_setting(("causal", "sequence_number"), True), "causal.sequence_number"),
        (_setting(("causal", "parent_request_id"), 7), "causal.parent_request_id"),
        (_setting(("causal", "extra"), "x"), "causal.extra"),
        (_setting(("expires_at_ms",), "soon"), "expires_at_ms"),
        (_setting(("expires_at_ms",), 1e15), "expires_at_ms"),
        (_setting(("unexpected",), 1), "unexpected"),
    ],
)
def test_signed_but_malformed_fields_are_refused(change: Any, field: str) -> None:
    keyring = make_keyring()
    wire = copy.deepcopy(make_request(make_signer(keyring)).to_wire())
    change(wire)
    resign(wire, keyring)
    with pytest.raises(MalformedEnvelopeError, match="wrong types or are missing") as caught:
        check(wire, keyring)
    assert field in str(caught.value)


def test_unsigned_field_changes_fail_the_signature_before_type_checks() -> None:
    keyring = make_keyring()
    wire = make_request(make_signer(keyring)).to_wire()
    with pytest.raises(SignatureError):
        check({**wire, "expires_at_ms": "soon"}, keyring)


def test_every_rejection_is_an_a2a_error_with_its_own_reason() -> None:
    kinds = (MalformedEnvelopeError, UnknownKeyError, SignatureError, ExpiredEnvelopeError)
    assert all(issubclass(kind, A2AError) for kind in kinds)
    assert [kind.reason for kind in kinds] == [
        "malformed",
        "unknown_key",
        "bad_signature",
        "expired",
    ]
