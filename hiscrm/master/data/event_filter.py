"""The names of the master's events, and which of them a client wants.

Every event has a name: ``item.<kind>`` for a committed new or changed item (one per
kind of the registry, ``hiscrm.items.KINDS``), and the supervisor's own events below. A
filter is a list of name prefixes, each a whole name or its first parts (``item``,
``item.message``, ``worker``), and optionally one account.
"""

from dataclasses import dataclass

from hiscrm.items import KINDS

ITEM_PREFIX = "item."

SUPERVISOR_EVENTS = (
    "worker.state",  # a worker slot changed state
    "worker.exit",  # a worker process ended (its exit record)
    "account.state",  # an account changed state
    "account.stale",  # an account became stale, or stopped being stale
    "account.quarantined",  # an account was quarantined
    "account.released",  # an account came out of quarantine
    "health",  # the master's health changed
    "reply.state",  # an outbox entry changed state
)
RESET = "reset"  # sent to a client whose cursor is older than what is kept
CUTOFF = "cutoff"  # sent to a client that could not keep up, before it is closed

ITEM_EVENTS = tuple(ITEM_PREFIX + name for name in KINDS)
EVENT_NAMES = ITEM_EVENTS + SUPERVISOR_EVENTS


def item_event(kind: str) -> str:
    return ITEM_PREFIX + kind


def _covers(prefix: str, name: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def check_prefix(prefix: str) -> str:
    """``prefix`` if it names at least one event; ValueError saying which exist if not."""
    if not any(_covers(prefix, name) for name in EVENT_NAMES):
        known = sorted({n.split(".")[0] for n in EVENT_NAMES} | set(EVENT_NAMES))
        raise ValueError(f"no event is named {prefix!r} or starts with it; known: {known}")
    return prefix


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events a client wants: names starting with one of ``types`` (all if empty),
    and only those of ``account_id`` if set (events about no account are then left out)."""

    types: tuple[str, ...] = ()
    account_id: str | None = None

    def matches(self, name: str, account_id: str | None) -> bool:
        if self.account_id is not None and account_id != self.account_id:
            return False
        return not self.types or any(_covers(prefix, name) for prefix in self.types)

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
