"""The names of the master's events, in one place.

Every event has a name: ``item.<kind>`` for a committed new or changed item (one per
kind of the registry, ``hiscrm.items.KINDS``), and the supervisor's own events below. A
filter (of the stream, of a hook) is a list of name prefixes, each a whole name or its
first parts (``item``, ``item.message``, ``worker``).
"""

from hiscrm.items import KINDS

ITEM_PREFIX = "item."

SUPERVISOR_EVENTS = (
    "worker.state",  # a worker slot changed state
    "worker.exit",  # a worker process ended (its exit record)
    "worker.removed",  # a worker slot is gone (a solo worker after its quarantine, fewer workers)
    "account.state",  # an account changed state
    "account.stale",  # an account became stale, or stopped being stale
    "account.quarantined",  # an account was quarantined
    "account.released",  # an account came out of quarantine
    "account.removed",  # an account left the registry (deleted, or gone from the config file)
    "health",  # the master's health changed
    "reply.state",  # an outbox entry changed state
    "reload.started",  # a rolling reload of the workers began (why)
    "reload.ended",  # it ended (why, error: null when every worker was replaced)
    "master.stopping",  # the master began to shut down (reason)
)
RESET = "reset"  # sent to a client whose cursor is older than what is kept
CUTOFF = "cutoff"  # sent to a client that could not keep up, before it is closed

ITEM_EVENTS = tuple(ITEM_PREFIX + name for name in KINDS)
EVENT_NAMES = ITEM_EVENTS + SUPERVISOR_EVENTS


def item_event(kind: str) -> str:
    return ITEM_PREFIX + kind


def covers(prefix: str, name: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def check_prefix(prefix: str) -> str:
    """``prefix`` if it names at least one event; ValueError saying which exist if not."""
    if not any(covers(prefix, name) for name in EVENT_NAMES):
        known = sorted({n.split(".")[0] for n in EVENT_NAMES} | set(EVENT_NAMES))
        raise ValueError(f"no event is named {prefix!r} or starts with it; known: {known}")
    return prefix
