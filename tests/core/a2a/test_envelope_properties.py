"""Property tests of A2A envelopes: any change to what is signed fails verification."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from kombu.utils.json import dumps as kombu_dumps
from kombu.utils.json import loads as kombu_loads

from project.core.a2a.envelope import Envelope, Keyring, MessageType, Signer, verify
from project.core.errors import (
    A2AError,
    MalformedEnvelopeError,
    SignatureError,
    UnknownKeyError,
)

KEYRING = Keyring.parse("k-active:" + "A" * 40 + ",k-second:" + "B" * 40 + ",k-third:" + "C" * 40)
MAX_BYTES = 1_000_000
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

Path = tuple[str | int, ...]


def _not_kombu_marker(value: dict[str, Any]) -> bool:
    # kombu's JSON decoder turns {"__type__": ..., "__value__": ...} into a Python
    # object (or refuses it); such payloads cannot cross Celery unchanged at all.
    return value.keys() != {"__type__", "__value__"}


json_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_leaves,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(max_size=10), children, max_size=5).filter(_not_kombu_marker)
    ),
    max_leaves=10,
)
payloads = st.dictionaries(st.text(max_size=10), json_values, max_size=6).filter(_not_kombu_marker)
identifiers = st.text(min_size=1, max_size=20)


@st.composite
def envelopes(draw: st.DrawFn) -> Envelope:
    """A signed envelope of any type, with any payload, maybe continuing a chain."""
    signer = Signer(KEYRING, ttl_s=draw(st.integers(60, 86_400)))
    signer.clock.tick(draw(st.integers(0, 2**40)))
    message_type = draw(st.sampled_from(MessageType))
    sender, recipient = draw(identifiers), draw(identifiers)
    payload = draw(payloads)
    if draw(st.booleans()):
        return signer.sign(
            message_type,
            sender=sender,
            recipient=recipient,
            payload=payload,
            origin=sender,
            request_id=draw(identifiers),
            parent_request_id=None,
        )
    parent = signer.request(sender=draw(identifiers), recipient=sender, payload={})
    return signer.reply(parent, message_type, payload, sender=sender, recipient=recipient)


def check(raw: object) -> Envelope:
    return verify(raw, KEYRING, max_bytes=MAX_BYTES)


def leaf_paths(value: Any, path: Path = ()) -> Iterator[Path]:
    """Every leaf of a JSON value; empty containers count as leaves."""
    if isinstance(value, dict) and value:
        for key, child in value.items():
            yield from leaf_paths(child, (*path, key))
    elif isinstance(value, list) and value:
        for index, child in enumerate(value):
            yield from leaf_paths(child, (*path, index))
    else:
        yield path


def container_paths(value: Any, path: Path = ()) -> Iterator[Path]:
    """Every dict (including the top level) inside a JSON value."""
    if isinstance(value, dict):
        yield path
        for key, child in value.items():
            yield from container_paths(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from container_paths(child, (*path, index))


def get_at(value: Any, path: Path) -> Any:
    for part in path:
        value = value[part]
    return value


def rendered(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def assert_refused(raw: dict[str, Any], changed: Path) -> A2AError:
    """verify must raise; for anything but ``key_id``, exactly SignatureError."""
    with pytest.raises(A2AError) as caught:
        check(raw)
    if changed[:1] != ("key_id",):
        assert isinstance(caught.value, SignatureError), (changed, caught.value)
    return caught.value


@given(envelopes())
@PROPERTY
def test_signed_envelope_verifies_after_json_round_trips(envelope: Envelope) -> None:
    wire = envelope.to_wire()
    assert check(wire) == envelope
    assert check(json.loads(json.dumps(wire))) == envelope
    assert check(json.loads(json.dumps(wire, ensure_ascii=False, indent=1))) == envelope
    assert check(kombu_loads(kombu_dumps(wire))) == envelope
    assert check(kombu_dumps(wire)) == envelope
    assert check(kombu_dumps(wire).encode("utf-8")) == envelope
    # What verify returns renders back to the signed wire form.
    assert check(wire).to_wire() == wire


@given(envelopes(), st.data())
@PROPERTY
def test_changing_any_signed_leaf_fails(envelope: Envelope, data: st.DataObject) -> None:
    wire = envelope.to_wire()
    paths = [p for p in leaf_paths(wire) if p != ("signature",)]
    path = data.draw(st.sampled_from(paths), label="path")
    old = get_at(wire, path)
    new = data.draw(json_values, label="new value")
    assume(rendered(new) != rendered(old))
    tampered = copy.deepcopy(wire)
    get_at(tampered, path[:-1])[path[-1]] = new
    error = assert_refused(tampered, path)
    if path == ("key_id",):
        if not isinstance(new, str):
            assert isinstance(error, MalformedEnvelopeError)
        elif new in KEYRING.key_ids:
            assert isinstance(error, SignatureError)
        else:
            assert isinstance(error, UnknownKeyError)


@given(envelopes(), st.data())
@PROPERTY
def test_same_value_of_another_json_type_fails(envelope: Envelope, data: st.DataObject) -> None:
    """1 -> 1.0 -> "1" -> true: equal-looking values of another type are other messages."""
    wire = envelope.to_wire()
    paths = [p for p in leaf_paths(wire) if p not in (("signature",), ("key_id",))]
    path = data.draw(st.sampled_from(paths), label="path")
    old = get_at(wire, path)
    candidates: list[Any] = [str(old), [old], {"v": old}, None]
    if isinstance(old, bool):
        candidates += [int(old), float(old)]
    elif isinstance(old, int):
        candidates += [float(old), old != 0]
    elif isinstance(old, float) and old.is_integer() and abs(old) < 2**53:
        candidates += [int(old)]
    new = data.draw(st.sampled_from(candidates), label="new value")
    assume(rendered(new) != rendered(old))
    tampered = copy.deepcopy(wire)
    get_at(tampered, path[:-1])[path[-1]] = new
    assert_refused(tampered, path)


@given(envelopes(), st.data())
@PROPERTY
def test_adding_or_removing_any_field_fails(envelope: Envelope, data: st.DataObject) -> None:
    wire = envelope.to_wire()
    tampered = copy.deepcopy(wire)
    if data.draw(st.booleans(), label="add"):
        path = data.draw(st.sampled_from(list(container_paths(wire))), label="dict")
        target = get_at(tampered, path)
        key = data.draw(st.text(max_size=10).filter(lambda k: k not in target), label="key")
        target[key] = data.draw(json_values, label="value")
        changed: Path = (*path, key)
    else:
        paths = [
            (*p, k)
            for p in container_paths(wire)
            for k in get_at(wire, p)
            if (*p, k) != ("signature",)
        ]
        changed = data.draw(st.sampled_from(paths), label="removed")
        del get_at(tampered, changed[:-1])[changed[-1]]
    error = assert_refused(tampered, changed)
    if changed == ("key_id",):
        assert isinstance(error, MalformedEnvelopeError)


@given(envelopes(), st.data())
@PROPERTY
def test_flipping_any_signature_character_fails(envelope: Envelope, data: st.DataObject) -> None:
    wire = envelope.to_wire()
    signature: str = wire["signature"]
    index = data.draw(st.integers(0, len(signature) - 1), label="index")
    replacement = data.draw(
        st.characters(exclude_categories=()).filter(lambda c: c != signature[index]), label="char"
    )
    flipped = signature[:index] + replacement + signature[index + 1 :]
    with pytest.raises(SignatureError):
        check({**wire, "signature": flipped})


@given(envelopes(), st.data())
@PROPERTY
def test_flipping_any_signature_byte_fails(envelope: Envelope, data: st.DataObject) -> None:
    """The same, at the byte level: any bit flip of the hex digest's bytes."""
    wire = envelope.to_wire()
    raw = bytearray(wire["signature"].encode("ascii"))
    index = data.draw(st.integers(0, len(raw) - 1), label="index")
    raw[index] ^= data.draw(st.integers(1, 127), label="mask")
    with pytest.raises(SignatureError):
        check({**wire, "signature": raw.decode("ascii")})


@given(envelopes(), st.data())
@PROPERTY
def test_another_known_key_id_fails_the_signature(envelope: Envelope, data: st.DataObject) -> None:
    others = [k for k in KEYRING.key_ids if k != envelope.key_id]
    key_id = data.draw(st.sampled_from(others), label="key_id")
    with pytest.raises(SignatureError):
        check({**envelope.to_wire(), "key_id": key_id})


@given(envelopes(), st.text(max_size=80).filter(lambda k: k not in KEYRING.key_ids))
@PROPERTY
def test_an_unknown_key_id_is_refused(envelope: Envelope, key_id: str) -> None:
    with pytest.raises(UnknownKeyError):
        check({**envelope.to_wire(), "key_id": key_id})
