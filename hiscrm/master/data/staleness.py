"""Per account: when it last made progress, and whether that is too long ago.

Progress is what the platform does: an upsert, or ``ctx.progress()`` (a platform that is
legitimately quiet calls it). An account watched for ``stale_after_s`` without progress
is *stale*: flagged and logged as a warning once per episode; the flag clears with the
next progress. A sync proves that the worker lives, not that the account does, so syncs
(empty ones included) do not count.

The nearest deadline is kept, not searched for on every event: a watch or progress only
adds a deadline ``stale_after_s`` from now, later than every one already there, and
progress that moves an account's deadline later leaves the kept one early, which costs
one ``check`` that finds nothing and looks again.
"""

from collections.abc import Callable

import msgspec
from structlog.typing import FilteringBoundLogger


class _Clock(msgspec.Struct):
    watched_since: float  # loop time it got a worker
    last_progress: float | None = None  # loop time of its last progress
    stale: bool = False
    episodes: int = 0

    def reference(self) -> float:
        return self.last_progress if self.last_progress is not None else self.watched_since


class Staleness:
    def __init__(
        self,
        stale_after_s: float,
        log: FilteringBoundLogger,
        on_change: Callable[[str, bool], None] = lambda account_id, stale: None,
    ) -> None:
        self.stale_after_s = stale_after_s
        self._log = log
        self._on_change = on_change
        self._clocks: dict[str, _Clock] = {}
        self._due: float | None = None  # never later than the nearest true deadline

    def is_stale(self, account_id: str) -> bool:
        clock = self._clocks.get(account_id)
        return clock is not None and clock.stale

    def episodes(self, account_id: str) -> int:
        clock = self._clocks.get(account_id)
        return clock.episodes if clock is not None else 0

    def watch(self, account_id: str, now: float) -> None:
        """The account has a worker from now on (again)."""
        if account_id not in self._clocks:
            self._clocks[account_id] = _Clock(now)
            self._note_deadline(now)

    def unwatch(self, account_id: str) -> None:
        """Disabled or removed: nobody expects progress from it."""
        clock = self._clocks.pop(account_id, None)
        if clock is not None and clock.stale:
            self._on_change(account_id, False)

    def progress(self, account_id: str, now: float) -> None:
        clock = self._clocks.get(account_id)
        if clock is None:
            return
        clock.last_progress = now
        self._note_deadline(now)
        if clock.stale:
            clock.stale = False
            self._log.info("account progress resumed", account_id=account_id)
            self._on_change(account_id, False)

    def _note_deadline(self, now: float) -> None:
        if self._due is None:  # else the kept one is earlier than now + stale_after_s
            self._due = now + self.stale_after_s

    def check(self, now: float) -> None:
        """Flag every account whose time is up; then find the nearest deadline again."""
        for account_id, clock in self._clocks.items():
            if clock.stale:
                continue
            if now - clock.reference() >= self.stale_after_s:
                clock.stale = True
                clock.episodes += 1
                self._log.warning(
                    "account is stale: no progress",
                    account_id=account_id,
                    seconds_without_progress=round(now - clock.reference(), 1),
                    stale_after_s=self.stale_after_s,
                    episodes=clock.episodes,
                )
                self._on_change(account_id, True)
        self._due = self._nearest()

    def next_deadline(self) -> float | None:
        return self._due

    def _nearest(self) -> float | None:
        due = [
            clock.reference() + self.stale_after_s
            for clock in self._clocks.values()
            if not clock.stale
        ]
        return min(due, default=None)
