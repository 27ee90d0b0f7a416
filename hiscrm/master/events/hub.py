"""The event hub: every event of the master, in id order, to whoever follows them (the
stream's clients, hooks).

Supervisor events (``publish``) are stored first — the store gives them their ids —,
and item events are the store's commits; so the hub never sends anything that is not
stored, and a client that resumes reads exactly what it missed back from the store.
The store tells the hub its new head after each commit (``committed``); one fetch task
reads the new events once, in pages, and offers each to every subscriber that wants it.
Items are read only while some subscriber wants item events.

A subscriber gets every event with an id above its ``start`` (the hub's position when it
subscribed); what came before, it reads from the store itself (``EventStream``).
"""

import asyncio
from collections import Counter
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from structlog.typing import FilteringBoundLogger

from hiscrm.event_names import SUPERVISOR_EVENTS
from hiscrm.items import epoch_ms
from hiscrm.master.data.event_filter import EventFilter
from hiscrm.master.data.store import EventQuery, NewEvent, Store, StoredEvent
from hiscrm.master.events.subscriber import Subscriber

FETCH_PAGE = 500  # events read from the store at once
RETRY_AFTER_S = 1.0  # a failed read of the store is tried again after this
SUPERVISOR_ONLY = EventFilter(SUPERVISOR_EVENTS)


class CutOff(StrEnum):
    """Why a stream's client was let go (``hiscrm_event_clients_cut_off_total{reason}``)."""

    TOO_SLOW = "too_slow"  # what waited for it in the master went over its buffer
    STOPPED_READING = "stopped_reading"  # one write to it waited too long


class EventHub:
    def __init__(
        self,
        store: Store,
        log: FilteringBoundLogger,
        count_error: Callable[[], object],
        node: str | None = None,
    ) -> None:
        self.store = store
        self._log = log
        self._count_error = count_error
        self.node = node
        window = store.event_window()
        self.head = window.head  # the last id the store committed, as it told us
        self.fetched = window.head  # every event up to here has been offered
        self._in_flight: int | None = None  # a fetch reads up to here now
        self._new = asyncio.Event()
        self.subscribers: set[Subscriber] = set()
        self.published: Counter[str] = Counter()  # supervisor events, by name
        self.offered: Counter[str] = Counter()  # events read and offered, by name
        self.cut_off: Counter[CutOff] = Counter()  # clients let go, by why

    # --- in ---------------------------------------------------------------------------

    def publish(self, name: str, data: dict[str, Any]) -> None:
        """A supervisor event (an ``EventSink``): stored, then offered."""
        account = data.get("account_id")
        fields = {"at": epoch_ms(), **data}
        if self.node is not None:
            fields.setdefault("node", self.node)
        self.published[name] += 1
        self.store.append_events(
            [NewEvent(name, fields["at"], account if isinstance(account, str) else None, fields)]
        )

    def committed(self, head: int) -> None:
        """The store committed events up to ``head`` (called on the loop)."""
        if head > self.head:
            self.head = head
            self._new.set()

    # --- out --------------------------------------------------------------------------

    def subscribe(self, subscriber: Subscriber) -> None:
        """From now on ``subscriber`` is offered every event above its ``start``, which
        is set here: what it must read from the store itself ends there."""
        subscriber.start = self._in_flight if self._in_flight is not None else self.fetched
        self.subscribers.add(subscriber)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)

    def _queries(self) -> list[EventFilter]:
        """What to read for the subscribers: supervisor events always (they are few);
        items of every account if one subscriber wants items of all, else only of the
        accounts some subscriber follows (reading and rendering items is the cost)."""
        per_account: dict[str, set[str]] = {}
        for subscriber in self.subscribers:
            wanted = subscriber.filter
            if not wanted.wants_items:
                continue
            if wanted.account_id is None:
                return [EventFilter()]
            per_account.setdefault(wanted.account_id, set()).update(wanted.types or ("item",))
        return [SUPERVISOR_ONLY] + [
            EventFilter(tuple(sorted(types)), account) for account, types in per_account.items()
        ]

    async def run(self) -> None:
        while True:
            await self._new.wait()
            self._new.clear()
            while self.fetched < self.head:
                upto = self._in_flight = self.head
                try:
                    found, upto = await self._fetch(self.fetched, upto)
                except Exception as exc:  # the store failing: said, counted, tried again
                    self._count_error()
                    self._log.error("events could not be read from the store", exc_info=exc)
                    self._in_flight = None
                    await asyncio.sleep(RETRY_AFTER_S)
                    continue
                self._in_flight = None
                self._offer(found)
                self.fetched = upto

    async def _fetch(self, after: int, upto: int) -> tuple[list[StoredEvent], int]:
        """The events wanted in ``(after, upto]``, in id order, and how far they are
        complete (a query that filled its page ends there)."""
        found: dict[int, StoredEvent] = {}
        complete = upto
        for wanted in self._queries():
            page = await self.store.events(EventQuery(after, upto, wanted, FETCH_PAGE))
            found.update((e.id, e) for e in page)
            if len(page) == FETCH_PAGE:
                complete = min(complete, page[-1].id)
        return [found[i] for i in sorted(found) if i <= complete], complete

    def _offer(self, events: list[StoredEvent]) -> None:
        for event in events:
            self.offered[event.name] += 1
        for subscriber in list(self.subscribers):
            if subscriber.offer(events):
                self.cut_off[CutOff.TOO_SLOW] += 1
                self._log.warning("event stream client cut off", reason=subscriber.cut_off)

    def let_go(self, why: CutOff) -> None:
        """A stream's client was let go otherwise than by ``offer`` (counted)."""
        self.cut_off[why] += 1
