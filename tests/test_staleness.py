"""Staleness in isolation: no progress for stale_after_s, episodes, and the deadline the
master sleeps to."""

import structlog

from hiscrm.master.data.staleness import Staleness


def test_deadlines_follow_watches_progress_and_stale_flags() -> None:
    changes: list[tuple[str, bool]] = []
    clocks = Staleness(10.0, structlog.get_logger(), lambda a, s: changes.append((a, s)))
    assert clocks.next_deadline() is None  # nothing watched: nothing to wake up for
    clocks.watch("a", 0.0)
    clocks.watch("b", 2.0)
    assert clocks.next_deadline() == 10.0
    clocks.progress("a", 5.0)  # a is due at 15 now, b at 12
    assert clocks.next_deadline() == 10.0  # kept early: a wake-up that finds nothing
    clocks.check(10.0)
    assert not clocks.is_stale("a")
    assert not clocks.is_stale("b")
    assert clocks.next_deadline() == 12.0
    clocks.check(12.0)
    assert clocks.is_stale("b")
    assert clocks.episodes("b") == 1
    assert clocks.next_deadline() == 15.0  # b is stale: only a is left to wait for
    clocks.check(15.0)
    assert clocks.is_stale("a")
    assert clocks.next_deadline() is None
    clocks.progress("b", 20.0)  # b makes progress again: due again at 30
    assert not clocks.is_stale("b")
    assert clocks.next_deadline() == 30.0
    clocks.check(30.0)
    assert clocks.episodes("b") == 2
    assert changes == [("b", True), ("a", True), ("b", False), ("b", True)]


def test_an_unwatched_account_is_never_stale_and_unwatching_clears_the_flag() -> None:
    changes: list[tuple[str, bool]] = []
    clocks = Staleness(10.0, structlog.get_logger(), lambda a, s: changes.append((a, s)))
    clocks.progress("x", 1.0)  # not watched: nothing
    clocks.check(100.0)
    assert not clocks.is_stale("x")
    clocks.watch("a", 0.0)
    clocks.check(10.0)
    clocks.unwatch("a")
    assert not clocks.is_stale("a")
    assert changes == [("a", True), ("a", False)]
