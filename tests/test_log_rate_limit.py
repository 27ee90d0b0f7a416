"""The master's log rate limit, without processes: a clock, the processor, what it emits."""

from collections.abc import Callable
from typing import Any

import pytest
import structlog

from hiscrm.log_rate_limit import SUMMARY_EVENT, RateLimiter


class Harness:
    def __init__(self) -> None:
        self.now = 0.0
        self.summaries: list[tuple[str, dict[str, Any]]] = []
        self.timers: list[tuple[float, Callable[[], None]]] = []
        self.limiter = RateLimiter(
            burst=3,
            window_s=10.0,
            clock=lambda: self.now,
            emit=lambda level, fields: self.summaries.append((level, fields)),
            schedule=lambda delay, action: self.timers.append((self.now + delay, action)),
        )

    def log(self, level: str, event: str, **fields: Any) -> bool:
        """Whether the line would be written."""
        try:
            self.limiter(None, level, {"event": event, "level": level, **fields})
        except structlog.DropEvent:
            return False
        return True

    def advance(self, seconds: float) -> None:
        self.now += seconds
        due = [t for t in self.timers if t[0] <= self.now]
        self.timers = [t for t in self.timers if t[0] > self.now]
        for _, action in due:
            action()


def raised_here() -> ValueError:
    try:
        raise ValueError("boom")
    except ValueError as exc:
        return exc


@pytest.mark.timeout(5)
def test_a_flood_of_one_error_is_a_burst_then_a_count() -> None:
    h = Harness()
    written = [h.log("error", "accept failed", errors_total=n) for n in range(100)]
    assert written == [True] * 3 + [False] * 97  # a changing counter does not make it new
    assert h.summaries == []
    h.advance(10.0)  # the window ends with nothing more: the count is written anyway
    assert h.summaries == [
        (
            "error",
            {"like": "accept failed", "suppressed": 97, "window_s": 10.0, "suppressed_total": 97},
        )
    ]
    assert h.log("error", "accept failed")  # a new window
    assert h.limiter.suppressed_total == 97


@pytest.mark.timeout(5)
def test_kinds_are_told_apart_and_info_is_never_limited() -> None:
    h = Harness()
    for _ in range(5):
        assert h.log("info", "worker state", worker="worker1")
    for worker in ("worker1", "worker2"):
        assert [h.log("warning", "worker exited", worker=worker) for _ in range(4)] == [
            True,
            True,
            True,
            False,
        ]
    for account in ("acc-1", "acc-2"):  # accounts are named account_id in log lines
        logged = [h.log("warning", "account state", account_id=account) for _ in range(4)]
        assert logged == [True, True, True, False]
    for hook in ("broken", "sleeper"):  # one failing hook does not hide another's failure
        logged = [h.log("error", "hook delivery failed", hook=hook) for _ in range(4)]
        assert logged == [True, True, True, False]
    exc = raised_here()
    assert [h.log("error", "API error", exc_info=exc) for _ in range(4)].count(True) == 3
    assert h.log("error", "API error", exc_info=KeyError("other"))  # another exception
    assert h.log("error", SUMMARY_EVENT, like="x", suppressed=1)  # summaries always pass


@pytest.mark.timeout(5)
def test_a_later_line_or_a_flush_writes_the_count_once() -> None:
    h = Harness()
    for _ in range(5):
        h.log("warning", "slow client")
    h.now += 11  # past the window, before its timer ran
    assert h.log("warning", "slow client")
    assert [s[1]["suppressed"] for s in h.summaries] == [2]
    h.advance(0)  # the old window's timer: already summarised, nothing more
    assert len(h.summaries) == 1
    for _ in range(5):
        h.log("warning", "slow client")
    h.limiter.flush()
    assert [s[1]["suppressed"] for s in h.summaries] == [2, 3]
    h.advance(20)
    assert len(h.summaries) == 2
