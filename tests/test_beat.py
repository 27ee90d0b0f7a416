"""The beat the workers of a host keep (``hiscrm.beat``): pure functions of the
monotonic clock."""

import pytest

from hiscrm.beat import idle_due, next_beat, on_the_beat


@pytest.mark.parametrize(
    ("now", "period", "last", "next_"),
    [(12.3, 5.0, 10.0, 15.0), (15.0, 5.0, 15.0, 20.0), (0.7, 0.25, 0.5, 0.75)],
)
def test_beats_are_whole_multiples_of_the_period(
    now: float, period: float, last: float, next_: float
) -> None:
    assert on_the_beat(now, period) == pytest.approx(last)
    assert next_beat(now, period) == pytest.approx(next_)


def test_two_processes_that_started_apart_beat_together() -> None:
    period = 5.0
    first, second = next_beat(1000.2, period), next_beat(1003.9, period)
    assert first == second == 1005.0


def test_an_idle_message_goes_once_a_beat_has_passed_and_half_a_period_since_the_last() -> None:
    period = 75.0
    assert idle_due(10.0, None, period)  # never sent: at once
    assert not idle_due(74.0, 0.5, period)  # no beat since
    assert idle_due(75.5, 0.5, period)  # a beat passed, 75 s since
    assert not idle_due(75.5, 74.0, period)  # a beat passed, but one went 1.5 s ago
    assert idle_due(150.2, 74.0, period)  # the next beat: 76.2 s since
    # Never more than one and a half periods apart.
    for last in (0.0, 20.0, 37.4, 37.6, 60.0, 74.9):
        beat = next(b for b in range(75, 400, 75) if idle_due(b + 0.1, last, period))
        assert beat + 0.1 - last <= 1.5 * period
