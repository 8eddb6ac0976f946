"""The worker's consumer watchdog: when is a live worker stalled (pure logic)."""

from __future__ import annotations

from project.worker.bootstep import ConsumerWatchdog, queue_names


def test_stalled_only_after_the_whole_timeout_with_waiting_work_and_a_free_slot() -> None:
    dog = ConsumerWatchdog(10.0)
    assert dog.check(waiting=3, active=0, concurrency=2, now=100.0) is None
    assert dog.check(waiting=3, active=1, concurrency=2, now=105.0) is None
    assert dog.check(waiting=1, active=1, concurrency=2, now=110.0) == 10.0
    assert dog.check(waiting=1, active=0, concurrency=2, now=112.5) == 12.5


def test_receiving_a_message_clears_it() -> None:
    dog = ConsumerWatchdog(10.0)
    dog.check(waiting=3, active=0, concurrency=2, now=100.0)
    dog.note_received()
    assert dog.check(waiting=3, active=0, concurrency=2, now=109.0) is None
    assert dog.check(waiting=3, active=0, concurrency=2, now=118.9) is None
    assert dog.check(waiting=3, active=0, concurrency=2, now=119.0) == 10.0


def test_busy_slots_or_an_empty_queue_are_not_a_stall() -> None:
    dog = ConsumerWatchdog(10.0)
    for now in range(0, 100, 5):
        # Long jobs fill every slot: messages wait, rightly.
        assert dog.check(waiting=50, active=2, concurrency=2, now=float(now)) is None
    for now in range(100, 200, 5):
        assert dog.check(waiting=0, active=0, concurrency=2, now=float(now)) is None


def test_a_check_that_could_not_look_starts_over() -> None:
    dog = ConsumerWatchdog(10.0)
    dog.check(waiting=3, active=0, concurrency=2, now=100.0)
    dog.note_unknown()  # Redis was away: a long outage is not a stall
    assert dog.check(waiting=3, active=0, concurrency=2, now=160.0) is None
    assert dog.check(waiting=3, active=0, concurrency=2, now=170.0) == 10.0


def test_zero_disables_it() -> None:
    dog = ConsumerWatchdog(0)
    assert dog.check(waiting=9, active=0, concurrency=2, now=0.0) is None
    assert dog.check(waiting=9, active=0, concurrency=2, now=1e9) is None


def test_every_priority_level_of_the_queue_is_watched() -> None:
    assert queue_names("w7") == ["worker.w7", "worker.w7:3", "worker.w7:6", "worker.w7:9"]


def test_a_paused_process_starts_over_instead_of_stopping_on_resume() -> None:
    dog = ConsumerWatchdog(10.0, max_gap_s=6.0)
    for now in (100.0, 102.0, 104.0):
        assert dog.check(waiting=3, active=0, concurrency=2, now=now) is None
    # SIGSTOP for a minute, then SIGCONT: the consumer gets its chance first.
    assert dog.check(waiting=3, active=0, concurrency=2, now=164.0) is None
    assert dog.check(waiting=3, active=0, concurrency=2, now=166.0) is None
    assert dog.check(waiting=3, active=0, concurrency=2, now=174.0) is None  # gap 8 s > 6 s
    for now in (176.0, 178.0, 180.0, 182.0):
        assert dog.check(waiting=3, active=0, concurrency=2, now=now) is None
    assert dog.check(waiting=3, active=0, concurrency=2, now=184.0) == 10.0
