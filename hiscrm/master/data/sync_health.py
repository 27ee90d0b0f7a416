"""Per account: when it last synced successfully, and whether that is too long ago.

An assigned account with no committed sync for ``stale_after_s`` is *stale*: flagged,
logged as a warning once per episode, counted; the flag clears with the next committed
sync. Workers send an empty sync for an idle account now and then, so an account with
nothing new is not stale, while one whose sync path is blocked is. Failed syncs are
counted by reason.

The nearest deadline is kept, not searched for on every event: a watch or a success only
adds a deadline ``stale_after_s`` from now, later than every one already there, and a
success that moves an account's deadline later leaves the kept one early, which costs
one ``check`` that finds nothing and looks again.
"""

from dataclasses import dataclass, field

from structlog.typing import FilteringBoundLogger


@dataclass(slots=True)
class AccountSync:
    watched_since: float | None = None  # loop time it got an owner; None: not watched
    last_success: float | None = None  # loop time of the last committed sync
    last_success_at: int | None = None  # the same, in ms since the epoch
    stale: bool = False
    stale_episodes: int = 0
    syncs: int = 0
    items: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def reference(self) -> float | None:
        return self.last_success if self.last_success is not None else self.watched_since


class SyncHealth:
    def __init__(self, stale_after_s: float, log: FilteringBoundLogger) -> None:
        self.stale_after_s = stale_after_s
        self._log = log
        self.accounts: dict[str, AccountSync] = {}
        self._due: float | None = None  # never later than the nearest true deadline

    def _get(self, account_id: str) -> AccountSync:
        return self.accounts.setdefault(account_id, AccountSync())

    def watch(self, account_id: str, now: float) -> None:
        account = self._get(account_id)
        if account.watched_since is None:
            account.watched_since = now
            self._note_deadline(now)

    def success(self, account_id: str, now: float, at_ms: int, items: int) -> None:
        account = self._get(account_id)
        account.syncs += 1
        account.items += items
        account.last_success, account.last_success_at = now, at_ms
        if account.watched_since is not None:
            self._note_deadline(now)
        if account.stale:
            account.stale = False
            self._log.info("account sync resumed", account_id=account_id)

    def failure(self, account_id: str, reason: str) -> None:
        errors = self._get(account_id).errors
        errors[reason] = errors.get(reason, 0) + 1

    def _note_deadline(self, now: float) -> None:
        if self._due is None:  # else the kept one is earlier than now + stale_after_s
            self._due = now + self.stale_after_s

    def check(self, now: float) -> None:
        """Flag every account whose time is up; then find the nearest deadline again."""
        for account_id, account in self.accounts.items():
            reference = account.reference()
            if account.stale or account.watched_since is None or reference is None:
                continue
            if now - reference >= self.stale_after_s:
                account.stale = True
                account.stale_episodes += 1
                self._log.warning(
                    "account sync is stale",
                    account_id=account_id,
                    seconds_without_sync=round(now - reference, 1),
                    stale_after_s=self.stale_after_s,
                    episodes=account.stale_episodes,
                )
        self._due = self._nearest()

    def next_deadline(self) -> float | None:
        return self._due

    def _nearest(self) -> float | None:
        due = [
            reference + self.stale_after_s
            for account in self.accounts.values()
            if account.watched_since is not None
            and not account.stale
            and (reference := account.reference()) is not None
        ]
        return min(due, default=None)
