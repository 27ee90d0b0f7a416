"""Which events a client (of the stream, or a hook) wants: name prefixes, and optionally
one account. The names themselves: ``hiscrm.event_names``."""

import msgspec

from hiscrm.event_names import SUPERVISOR_EVENTS, covers, item_event
from hiscrm.items import KINDS


class EventFilter(msgspec.Struct, frozen=True):
    """Which events a client wants: names starting with one of ``types`` (all if empty),
    and only those of ``account_id`` if set (events about no account are then left out)."""

    types: tuple[str, ...] = ()
    account_id: str | None = None

    def matches(self, name: str, account_id: str | None) -> bool:
        if self.account_id is not None and account_id != self.account_id:
            return False
        return not self.types or any(covers(prefix, name) for prefix in self.types)

    @property
    def kinds(self) -> tuple[str, ...]:
        """The kinds of item whose events it wants."""
        return tuple(k for k in KINDS if self.matches(item_event(k), self.account_id))

    @property
    def supervisor_events(self) -> tuple[str, ...]:
        """The supervisor's events it wants, by whole name."""
        return tuple(n for n in SUPERVISOR_EVENTS if self.matches(n, self.account_id))

    @property
    def wants_items(self) -> bool:
        return bool(self.kinds)
