"""The beat every process of a host keeps: moments that are whole multiples of a period on
the monotonic clock, which is the host's and the same in every process (asyncio's
``loop.time()`` reads it).

The workers' heartbeats, sync ticks and idle syncs fall on it, so what they send on
their own reaches the master together, and the master reads it (and the store commits
the idle syncs) in a few wake-ups rather than one per worker and account. The master's
own periodic timers (the health check, the API's Date header) fall on it too: an idle
master wakes once a second for all of them, not once for each.
"""

import math


def on_the_beat(now: float, period: float) -> float:
    """The last moment at or before ``now`` that is a whole multiple of ``period``."""
    return math.floor(now / period) * period


def next_beat(now: float, period: float) -> float:
    """The first moment after ``now`` that is a whole multiple of ``period``."""
    return on_the_beat(now, period) + period


def idle_due(now: float, last: float | None, period: float) -> bool:
    """Whether an idle message (one sent only to show the path works) is due at ``now``,
    the last message having gone at ``last`` (None: never): once a beat of ``period`` has
    passed since ``last``, and at least half a period after it (so one sent just before
    the beat does not bring an idle one right behind it). The gap between two is at most
    one and a half periods."""
    if last is None:
        return True
    return on_the_beat(now, period) > last and now - last >= period / 2
