"""Which worker watches which account, as decisions without I/O.

* Every account has a *home*, one of the configured workers, at most
  ``accounts_per_worker`` each: an account added (at start, in order, or later) goes to
  the worker with the fewest homes and room, the first on a tie (at start: round robin).
  It stays with its home across restarts of that worker. Nothing moves homes but
  scaling: more workers take homes from the busiest until homes differ by at most one
  per worker (2 → 3 workers moves a third of the accounts); fewer workers move only the
  accounts of the removed ones, each to the worker with the fewest homes. An account
  without room anywhere has no home (``unassigned``) until room appears (more workers,
  an account removed or disabled), then it gets one, in the order accounts were added.
* If the home cannot run (its process is gone: crashed, in backoff, boot_failed) for
  ``reassign_after_s``, its accounts move to the least loaded running workers with room.
  When the home runs again they move back.
* Moving an account off a *running* worker is a handshake: revoke, wait for
  ``worker:account:released`` (its task stopped, its changes flushed), then assign. So at
  any moment an account is assigned to at most one worker. If the releasing worker dies,
  its death is the release.
* A *quarantined* account's home is a worker of its own (a *solo* worker, not one of the
  configured ones): it runs there alone, and is never placed anywhere else until it is
  released, when it goes back to its planned home by the same handshake. Accounts the
  caller says must wait (suspected of killing their worker) are never moved onto another
  worker while theirs is down.

The assigner returns ``Assign``/``Revoke`` actions; the account manager carries them out.
"""

from collections import Counter
from collections.abc import Callable

import msgspec

from hiscrm.models import AccountSpec


class Assign(msgspec.Struct, frozen=True):
    worker_id: str
    account: AccountSpec

    @property
    def account_id(self) -> str:
        return self.account.id


class Revoke(msgspec.Struct, frozen=True):
    worker_id: str
    account_id: str


Action = Assign | Revoke


class Slot(msgspec.Struct):
    account: AccountSpec
    home: str | None  # None: no room anywhere
    owner: str | None = None  # assigned to (or being released by) this worker
    releasing: bool = False  # a revoke is out; waiting for the owner to let go
    target: str | None = None  # where it goes once released
    planned_home: str | None = None  # its home when it is not quarantined
    leaving: bool = False  # removed: forgotten once released


def plan_homes(
    accounts: list[AccountSpec], worker_ids: list[str], per_worker: int
) -> dict[str, str | None]:
    """Round-robin over the enabled accounts, at most ``per_worker`` each; accounts beyond
    capacity (and disabled ones) get no home."""
    capacity = len(worker_ids) * per_worker
    enabled = [a for a in accounts if a.enabled]
    homes: dict[str, str | None] = {a.id: None for a in accounts}
    for i, account in enumerate(enabled[:capacity]):
        homes[account.id] = worker_ids[i % len(worker_ids)]
    return homes


class Assigner:
    def __init__(
        self,
        accounts: list[AccountSpec],
        worker_ids: list[str],
        per_worker: int,
        reassign_after_s: float,
        now: float,
    ) -> None:
        homes = plan_homes(accounts, worker_ids, per_worker)
        self.slots: dict[str, Slot] = {
            a.id: Slot(a, homes[a.id], planned_home=homes[a.id]) for a in accounts
        }
        self._workers = list(worker_ids)
        self._per_worker = per_worker
        self._reassign_after_s = reassign_after_s
        self._running: set[str] = set()
        self._down_since: dict[str, float] = {w: now for w in worker_ids}

    # --- queries -------------------------------------------------------------------------

    def loads(self) -> Counter[str]:
        """Accounts each worker holds or is about to receive, counted in one pass."""
        loads: Counter[str] = Counter()
        for s in self.slots.values():
            holders = {s.owner} if s.owner is not None and not s.releasing else set()
            if s.target is not None:
                holders.add(s.target)
            loads.update(holders)
        return loads

    def releasing(self, account_id: str) -> bool:
        slot = self.slots.get(account_id)
        return slot is not None and slot.releasing

    def accounts_of(self, worker_id: str) -> list[str]:
        return [a for a, s in self.slots.items() if s.owner == worker_id]

    def owner_of(self, account_id: str) -> str | None:
        slot = self.slots.get(account_id)
        return slot.owner if slot is not None else None

    @property
    def unplaced(self) -> list[str]:
        return [a for a, s in self.slots.items() if s.owner is None]

    def no_room(self) -> str:
        """Why an account has no home, with the numbers behind it."""
        workers, capacity = len(self._workers), len(self._workers) * self._per_worker
        taken = sum(self._home_counts().values())
        sentence = (
            f"{workers} worker{'s' if workers != 1 else ''} x {self._per_worker} "
            f"accounts_per_worker = {capacity}"
        )
        if taken >= capacity:
            return f"no capacity: {sentence}, all taken"
        return f"waiting for room: {sentence}, {taken} taken"

    def solo_workers(self) -> list[str]:
        """The workers of quarantined accounts (each runs one account alone), and those
        still releasing an account after its quarantine ended."""
        workers = {s.home for s in self.slots.values() if s.home is not None}
        workers |= {s.owner for s in self.slots.values() if s.owner is not None}
        return sorted(w for w in workers if w not in self._workers)

    def next_deadline(self) -> float | None:
        """When accounts waiting for a down worker become due to move, if any wait."""
        due = [
            since + self._reassign_after_s
            for worker, since in self._down_since.items()
            if worker in self._workers
            and any(
                (s.owner == worker and not s.releasing) or (s.owner is None and s.home == worker)
                for s in self.slots.values()
            )
        ]
        return min(due, default=None)

    # --- events --------------------------------------------------------------------------

    def worker_up(self, worker_id: str, now: float) -> list[Action]:
        """A worker registered: give it its accounts, and call home the ones that moved."""
        self._running.add(worker_id)
        self._down_since.pop(worker_id, None)
        actions: list[Action] = []
        for slot in self.slots.values():
            if slot.owner == worker_id and not slot.releasing:
                actions.append(Assign(worker_id, slot.account))  # its own, after a restart
            elif slot.home == worker_id and not slot.releasing and slot.owner != worker_id:
                if slot.owner in self._running:  # moved away; bring it back by handshake
                    slot.releasing, slot.target = True, worker_id
                    actions.append(Revoke(slot.owner, slot.account.id))
                else:  # nobody runs it now
                    slot.owner = worker_id
                    actions.append(Assign(worker_id, slot.account))
        return actions + self._place_unowned(now)

    def worker_down(self, worker_id: str, now: float) -> list[Action]:
        """A worker's process is gone. Its accounts wait for it (sticky) for a while; any
        it was releasing are released by its death."""
        self._running.discard(worker_id)
        self._down_since.setdefault(worker_id, now)
        actions: list[Action] = []
        for slot in list(self.slots.values()):  # a leaving account is forgotten on the way
            if slot.owner == worker_id and slot.releasing:
                actions += self._hand_over(slot, now)
        return actions

    def released(self, worker_id: str, account_id: str, now: float) -> list[Action]:
        slot = self.slots.get(account_id)
        if slot is None or slot.owner != worker_id or not slot.releasing:
            return []
        return self._hand_over(slot, now)

    def quarantine(self, account_id: str, solo: str, now: float) -> list[Action]:
        """From now on the account runs alone on worker ``solo`` (started by the caller)."""
        slot = self.slots[account_id]
        slot.home = solo
        self._down_since.setdefault(solo, now)
        return self._send_home(slot, now)

    def release_quarantine(self, account_id: str, now: float) -> list[Action]:
        """Back to its planned home (by a handshake if its own worker holds it)."""
        slot = self.slots[account_id]
        slot.home = slot.planned_home
        return self._send_home(slot, now)

    # --- accounts and workers that change ---------------------------------------------

    def add(self, account: AccountSpec, now: float) -> list[Action]:
        """A new account: a home where there is room (none if it is disabled)."""
        home = self._roomiest() if account.enabled else None
        self.slots[account.id] = Slot(account, home, planned_home=home)
        return self._place_unowned(now)

    def change(self, account: AccountSpec, now: float) -> list[Action]:
        """New options (or platform, or enabled): its task restarts with them. A running
        owner lets it go and gets it back, so the task starts afresh."""
        slot = self.slots[account.id]
        was_enabled, slot.account = slot.account.enabled, account
        if not account.enabled:
            slot.home = slot.planned_home = None
            return self._take_back(slot, now, target=None) + self._house_homeless(now)
        if not was_enabled:
            slot.home = slot.planned_home = self._roomiest()
            return self._place_unowned(now)
        return self._take_back(slot, now, target=slot.owner)

    def remove(self, account_id: str, now: float) -> list[Action]:
        """The account goes: let go by its worker (if one runs it), then forgotten."""
        slot = self.slots.get(account_id)
        if slot is None:
            return []
        slot.leaving, slot.home, slot.planned_home = True, None, None
        if slot.releasing:
            slot.target = None
            return self._house_homeless(now)
        if slot.owner is not None and slot.owner in self._running:
            slot.releasing, slot.target = True, None
            return [Revoke(slot.owner, account_id), *self._house_homeless(now)]
        del self.slots[account_id]
        return self._house_homeless(now)

    def gone(self, account_id: str) -> bool:
        """Removed and let go by its worker: nothing of it is left here."""
        return account_id not in self.slots

    def set_workers(self, worker_ids: list[str], now: float) -> list[Action]:
        """Scaling to ``worker_ids``: new ones take homes from the busiest, removed ones
        lose theirs to the least busy; only those accounts move (by handshake)."""
        removed = [w for w in self._workers if w not in worker_ids]
        self._workers = list(worker_ids)
        for worker in worker_ids:
            if worker not in self._running:
                self._down_since.setdefault(worker, now)
        moved: list[Slot] = []
        for slot in self.slots.values():
            if slot.planned_home in removed:
                slot.planned_home = None
                moved.append(slot)
        for slot in moved:  # to the least busy remaining worker with room
            slot.planned_home = self._roomiest()
        moved += self._homeless_housed()  # new room first goes to those without a home
        while True:  # even out: the busiest gives to the least busy
            homes = self._home_counts()
            busiest = max(self._workers, key=lambda w: homes[w], default=None)
            idlest = min(self._workers, key=lambda w: homes[w], default=None)
            if busiest is None or idlest is None or homes[busiest] - homes[idlest] <= 1:
                break
            slot = next(s for s in reversed(list(self.slots.values())) if s.planned_home == busiest)
            slot.planned_home = idlest
            moved.append(slot)
        actions: list[Action] = []
        done: set[str] = set()
        for slot in moved:  # each once, in the order decided
            if slot.account.id in done:
                continue
            done.add(slot.account.id)
            if slot.home != slot.planned_home and slot.home not in (None, *removed, *worker_ids):
                continue  # quarantined: it stays on its own worker until released
            slot.home = slot.planned_home
            owner_runs = slot.owner is not None and slot.owner in self._running
            if owner_runs and slot.home is not None and slot.home not in self._running:
                continue  # it moves when its new home runs (worker_up calls it home)
            actions += self._send_home(slot, now)
        for worker in removed:
            self._down_since.pop(worker, None)
        return actions + self._place_unowned(now)

    def _homeless_housed(self) -> list[Slot]:
        """Enabled accounts without a home (and not quarantined) get one while there is
        room, in the order they were added; the slots that got one. One that a worker
        runs already (placed where loads allowed) gets that worker if it has room."""
        housed: list[Slot] = []
        for slot in self.slots.values():
            if slot.home is not None or slot.leaving or not slot.account.enabled:
                continue
            owner = slot.owner
            if owner in self._workers and self._home_counts()[owner] < self._per_worker:
                home: str | None = owner
            else:
                home = self._roomiest()
            if home is None:
                break
            slot.planned_home = home
            housed.append(slot)
        return housed

    def _house_homeless(self, now: float) -> list[Action]:
        """Room appeared (an account went): homes for the homeless, who go there."""
        actions: list[Action] = []
        for slot in self._homeless_housed():
            slot.home = slot.planned_home
            actions += self._send_home(slot, now)
        return actions

    def _home_counts(self) -> Counter[str]:
        counts: Counter[str] = Counter({w: 0 for w in self._workers})
        counts.update(s.planned_home for s in self.slots.values() if s.planned_home is not None)
        return counts

    def _roomiest(self) -> str | None:
        """The configured worker with the fewest homes and room for one more (the first
        on a tie); None if every one is full."""
        homes = self._home_counts()
        candidates = [w for w in self._workers if homes[w] < self._per_worker]
        return min(candidates, key=lambda w: homes[w], default=None)  # min keeps the first

    def _take_back(self, slot: Slot, now: float, target: str | None) -> list[Action]:
        """Have the account's worker let it go (then ``target`` gets it, if it runs)."""
        if slot.releasing:
            slot.target = target
            return []
        if slot.owner is not None and slot.owner in self._running:
            slot.releasing, slot.target = True, target
            return [Revoke(slot.owner, slot.account.id)]
        slot.owner = None
        return self._place_unowned(now)

    def _send_home(self, slot: Slot, now: float) -> list[Action]:
        if slot.releasing:  # already on its way somewhere: there, then home
            slot.target = slot.home if slot.home in self._running else None
            return []
        if slot.owner == slot.home:
            return []
        if slot.owner is not None and slot.owner in self._running:
            slot.releasing = True
            slot.target = slot.home if slot.home in self._running else None
            return [Revoke(slot.owner, slot.account.id)]
        slot.owner = None  # whoever had it is down: it holds nothing
        return self._place_unowned(now)

    def tick(self, now: float, waiting: Callable[[str], bool] = lambda a: False) -> list[Action]:
        """Move the accounts of workers that have been down for ``reassign_after_s``,
        except those ``waiting`` says must wait for their worker."""
        actions: list[Action] = []
        loads = self.loads()
        for worker, since in list(self._down_since.items()):
            if now - since < self._reassign_after_s or worker not in self._workers:
                continue
            for slot in self.slots.values():
                if waiting(slot.account.id) or slot.home != slot.planned_home:
                    continue
                if slot.owner == worker and not slot.releasing:
                    new_owner = self._least_loaded(loads)
                    if new_owner is None:
                        break
                    loads[worker] -= 1
                    loads[new_owner] += 1
                    slot.owner = new_owner
                    actions.append(Assign(new_owner, slot.account))
        return actions + self._place_unowned(now)

    # --- helpers -------------------------------------------------------------------------

    def _hand_over(self, slot: Slot, now: float) -> list[Action]:
        target, slot.target, slot.releasing = slot.target, None, False
        if slot.leaving:
            slot.owner = None
            del self.slots[slot.account.id]
            return []
        if target is not None and target in self._running:
            slot.owner = target
            return [Assign(target, slot.account)]
        slot.owner = None
        return self._place_unowned(now)

    def _least_loaded(self, loads: Counter[str]) -> str | None:
        """The running worker with the fewest accounts and room for one more (the first
        in worker order on a tie)."""
        candidates = [
            w for w in self._workers if w in self._running and loads[w] < self._per_worker
        ]
        return min(candidates, key=lambda w: loads[w], default=None)  # min keeps the first

    def _place_unowned(self, now: float) -> list[Action]:
        """Accounts nobody holds go home if their home runs; if it has been down for
        ``reassign_after_s`` (or they have no home), to the least loaded worker with room."""
        actions: list[Action] = []
        loads: Counter[str] | None = None  # counted when first needed
        for slot in self.slots.values():
            if slot.owner is not None or slot.releasing or not slot.account.enabled:
                continue
            home = slot.home
            if home is not None and home in self._running:
                worker: str | None = home
            elif home is not None and home not in self._workers:
                continue  # a solo worker: its account waits for it, nowhere else
            elif home is None or now - self._down_since.get(home, now) >= self._reassign_after_s:
                loads = loads if loads is not None else self.loads()
                worker = self._least_loaded(loads)
            else:
                continue  # its home may be back any moment
            if worker is not None:
                slot.owner = worker
                if loads is not None:
                    loads[worker] += 1
                actions.append(Assign(worker, slot.account))
        return actions
