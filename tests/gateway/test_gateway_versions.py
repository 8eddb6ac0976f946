"""Task versions: ordered by log cursor, then by write count."""

from __future__ import annotations

import pytest
from a2a.server.cluster.version import TaskVersion
from hypothesis import given
from hypothesis import strategies as st

from project.gateway.versions import counter_of, cursor_of, pack

cursors = st.tuples(st.integers(1, 2**45), st.integers(0, 2**40)).map(lambda t: f"{t[0]}-{t[1]}")
counters = st.integers(0, 2**32 - 1)


@given(cursors, counters)
def test_a_version_gives_back_its_cursor_and_counter(cursor: str, counter: int) -> None:
    version = pack(cursor, counter)
    assert (cursor_of(version), counter_of(version)) == (cursor, counter)


@given(cursors, counters, cursors, counters)
def test_versions_order_by_cursor_then_counter(c1: str, n1: int, c2: str, n2: int) -> None:
    def key(c: str, n: int) -> tuple[int, int, int]:
        ms, seq = c.split("-")
        return int(ms), int(seq), n

    assert pack(c1, n1).is_after(pack(c2, n2)) == (key(c1, n1) > key(c2, n2))


def test_a_logged_event_is_after_every_snapshot_before_it() -> None:
    snapshot = pack("1000-5", 7)
    assert pack("1000-6", 0).is_after(snapshot)
    assert not pack("1000-5", 0).is_after(snapshot)


def test_nothing_read_or_written_is_missing() -> None:
    assert pack(None, 0).is_missing
    assert not pack(None, 1).is_missing
    assert cursor_of(pack(None, 3)) is None
    with pytest.raises(ValueError):
        pack("1-0", 2**32)
    with pytest.raises(TypeError):
        cursor_of(TaskVersion("a string"))
