"""Which accounts are suspected of killing the worker processes they run in, as decisions
without I/O (the account manager feeds it events and acts on what it returns).

The evidence is an abnormal death of a worker process (killed — the OOM killer included
—, crashed, hung, exited on its own; not a stop the master asked for, not a boot failure
before any account was there) while the account was assigned to it. Within
``window_s``:

* an account present at deaths on two different worker slots, or at ``deaths``
  deaths in all, is **quarantined**: from then on it runs alone, in a worker process of
  its own (with that process's restart backoff), and never beside another account. A
  worker that crash-loops with several accounts therefore has all of them quarantined,
  each alone: the guilty one keeps dying by itself; the others run without trouble;
* an account present at any death is **suspected**: while its worker is down it waits
  for that worker (or for quarantine), and is never moved onto a healthy worker.

A quarantined account is **released** (back to normal placement) once it has run alone
for ``release_after_s`` without a death, or when an operator releases it.
"""

from collections import deque

import msgspec


class QuarantineRule(msgspec.Struct, frozen=True):
    window_s: float = 600.0
    deaths: int = 3  # deaths while it was assigned, within the window
    slots: int = 2  # or deaths on this many different worker slots
    release_after_s: float = 300.0  # running alone without a death this long


class _Evidence(msgspec.Struct):
    deaths: deque[tuple[float, str]] = msgspec.field(default_factory=deque)  # (when, worker slot)
    quarantined_since: float | None = None
    alone_since: float | None = None  # its own process runs its task since then


class Quarantine:
    def __init__(self, rule: QuarantineRule) -> None:
        self.rule = rule
        self._evidence: dict[str, _Evidence] = {}

    # --- queries -------------------------------------------------------------------------

    @property
    def quarantined(self) -> set[str]:
        return {a for a, e in self._evidence.items() if e.quarantined_since is not None}

    def is_quarantined(self, account_id: str) -> bool:
        evidence = self._evidence.get(account_id)
        return evidence is not None and evidence.quarantined_since is not None

    def suspected(self, account_id: str, now: float) -> bool:
        evidence = self._evidence.get(account_id)
        if evidence is None:
            return False
        self._forget_old(evidence, now)
        return bool(evidence.deaths) or evidence.quarantined_since is not None

    def deaths(self, account_id: str, now: float) -> int:
        evidence = self._evidence.get(account_id)
        if evidence is None:
            return 0
        self._forget_old(evidence, now)
        return len(evidence.deaths)

    def next_deadline(self) -> float | None:
        """When a quarantined account running alone is due to be released."""
        due = [
            e.alone_since + self.rule.release_after_s
            for e in self._evidence.values()
            if e.quarantined_since is not None and e.alone_since is not None
        ]
        return min(due, default=None)

    # --- events --------------------------------------------------------------------------

    def death(self, accounts: list[str], slot: str, now: float) -> list[str]:
        """A worker process of ``slot`` died abnormally with ``accounts`` assigned to it.
        Returns the accounts quarantined by it (not those that already were)."""
        newly: list[str] = []
        for account_id in accounts:
            evidence = self._evidence.setdefault(account_id, _Evidence())
            evidence.deaths.append((now, slot))
            evidence.alone_since = None
            self._forget_old(evidence, now)
            if evidence.quarantined_since is not None:
                continue
            slots = {s for _, s in evidence.deaths}
            if len(evidence.deaths) >= self.rule.deaths or len(slots) >= self.rule.slots:
                evidence.quarantined_since = now
                newly.append(account_id)
        return newly

    def running_alone(self, account_id: str, now: float) -> None:
        """The quarantined account's task runs in its own process."""
        evidence = self._evidence.get(account_id)
        quarantined = evidence is not None and evidence.quarantined_since is not None
        if quarantined and evidence is not None and evidence.alone_since is None:
            evidence.alone_since = now

    def stopped_alone(self, account_id: str) -> None:
        """Its own process or task stopped (without dying abnormally): the clock restarts."""
        evidence = self._evidence.get(account_id)
        if evidence is not None:
            evidence.alone_since = None

    def due_for_release(self, now: float) -> list[str]:
        """Accounts that have run alone long enough; they are released."""
        due = [
            account_id
            for account_id, e in self._evidence.items()
            if e.quarantined_since is not None
            and e.alone_since is not None
            and now - e.alone_since >= self.rule.release_after_s
        ]
        for account_id in due:
            self.release(account_id)
        return due

    def release(self, account_id: str) -> bool:
        """Lift the quarantine and forget the evidence; False if it was not quarantined."""
        evidence = self._evidence.pop(account_id, None)
        return evidence is not None and evidence.quarantined_since is not None

    def forget(self, account_id: str) -> None:
        """The account is gone (deleted)."""
        self._evidence.pop(account_id, None)

    def _forget_old(self, evidence: _Evidence, now: float) -> None:
        while evidence.deaths and now - evidence.deaths[0][0] > self.rule.window_s:
            evidence.deaths.popleft()
