"""Which of a spool's changes a load sends again, and under which numbers: decisions
without I/O (``AccountData.load`` carries them out).

A spool holds this host's changes of an account; those after the last one acknowledged
here (``floor``) may be missing from the store. In a cluster another host may have run
the account meanwhile and carried the store's ``acked_seq`` past their numbers, so the
numbers say nothing about what the store has: the store's digest does (its version and
hash of every item). For the newest spooled change of each item:

* the store lacks the item, or has an older version: the change is sent again;
* the store has the same version with the same hash: it has this change; nothing goes;
* the store has the same version with another hash (another host changed the item from
  the same earlier version), or a newer version: the store's data wins, as its merge rule
  (the higher version is kept) would decide anyway; the old change is dropped.

A change sent again keeps its number if it is above the store's ``acked_seq``; one at or
below it (another host numbered past it) gets a new number above every number this
spool or the store has used, so the store's gap check and the item's version go on
working and nothing the store already has is sent twice.
"""

from collections.abc import Callable, Iterable
from enum import StrEnum

import msgspec

Key = tuple[str, str]  # (kind, item id)


class Verdict(StrEnum):
    REPLAY = "replay"  # the store lacks it
    IN_STORE = "in_store"  # the store has this very change
    STORE_WINS = "store_wins"  # the store has a newer version, or another at this one


def verdict(version: int, hash_: int, stored: tuple[int, int] | None) -> Verdict:
    """One spooled change (its item's ``version`` and content ``hash_``) against what the
    store has of the item (version, hash), if anything."""
    if stored is None or stored[0] < version:
        return Verdict.REPLAY
    if stored[0] == version and stored[1] == hash_:
        return Verdict.IN_STORE
    return Verdict.STORE_WINS


class Spooled(msgspec.Struct, frozen=True):
    seq: int
    key: Key
    version: int
    hash: int


class ReplayPlan(msgspec.Struct):
    keep: list[Spooled] = msgspec.field(default_factory=list)  # sent again under their own numbers
    renumber: list[Spooled] = msgspec.field(default_factory=list)  # sent again under new numbers
    in_store: int = 0
    store_wins: int = 0
    superseded: int = 0  # older changes of an item the spool has a newer change of
    acknowledged: int = 0  # at or before the floor

    @property
    def replayed(self) -> int:
        return len(self.keep) + len(self.renumber)


def plan(
    changes: Iterable[Spooled],
    floor: int,
    acked_seq: int,
    stored: Callable[[Key], tuple[int, int] | None],
) -> ReplayPlan:
    """What to send again of ``changes`` (a spool's, in any order): those after ``floor``,
    the newest of each item, that the store lacks (``stored``: its version and hash of an
    item, if it has it); each list in the order of the original numbers."""
    result = ReplayPlan()
    newest: dict[Key, Spooled] = {}
    for change in changes:
        if change.seq <= floor:
            result.acknowledged += 1
            continue
        held = newest.get(change.key)
        if held is None:
            newest[change.key] = change
            continue
        result.superseded += 1
        if (change.version, change.seq) > (held.version, held.seq):
            newest[change.key] = change
    for change in sorted(newest.values(), key=lambda c: c.seq):
        found = verdict(change.version, change.hash, stored(change.key))
        if found is Verdict.IN_STORE:
            result.in_store += 1
        elif found is Verdict.STORE_WINS:
            result.store_wins += 1
        elif change.seq > acked_seq:
            result.keep.append(change)
        else:
            result.renumber.append(change)
    return result
