"""One client's event stream as Server-Sent Events frames: first what it missed (read
back from the store, after its cursor), then the live events the hub offers it.

A cursor older than what the store keeps (or newer than anything it has: another
store's) gets a ``reset`` event instead, naming what to reload; the stream then goes on
from the newest event. So does a history that supervisor events were pruned from while
it was being read (the store's floor, checked after each page). A client that falls too
far behind is sent a ``cutoff`` event with the reason, and the stream ends (it resumes
from its last event).
"""

import json
from collections.abc import AsyncIterator

import msgspec

from hiscrm.event_names import CUTOFF, RESET
from hiscrm.master.data.event_filter import EventFilter
from hiscrm.master.data.store import EventQuery, StoredEvent
from hiscrm.master.events.hub import EventHub
from hiscrm.master.events.subscriber import Subscriber

HISTORY_PAGE = 500  # events read back from the store at once
RETRY_MS = 2000  # how long an EventSource waits before it reconnects
RELOAD = ["/api/v1/status", "/api/v1/workers", "/api/v1/accounts", "/api/v1/accounts/{id}/..."]


def frame(event: StoredEvent) -> bytes:
    return f"id: {event.id}\nevent: {event.name}\ndata: {event.data}\n\n".encode()


def frames(events: list[StoredEvent]) -> bytes:
    return b"".join(frame(e) for e in events)


def control_frame(name: str, event_id: int, data: dict[str, object]) -> bytes:
    body = json.dumps(data, separators=(",", ":"))
    return f"id: {event_id}\nevent: {name}\ndata: {body}\n\n".encode()


class StreamRequest(msgspec.Struct, frozen=True):
    filter: EventFilter
    after: int | None  # resume after this id; None: from now on
    last: int | None = None  # start with the newest N events instead
    follow: bool = True  # False: what there is now, then the end


class EventStream:
    def __init__(
        self,
        hub: EventHub,
        request: StreamRequest,
        heartbeat_s: float,
        max_bytes: int,
    ) -> None:
        self._hub = hub
        self._store = hub.store
        self._request = request
        self._heartbeat_s = heartbeat_s
        self.subscriber = Subscriber(request.filter, max_bytes)
        self.sent = 0

    async def frames(self) -> AsyncIterator[bytes]:
        hub, request, subscriber = self._hub, self._request, self.subscriber
        hub.subscribe(subscriber)
        try:
            yield f"retry: {RETRY_MS}\n\n".encode()
            cursor = await self._first_cursor()
            if isinstance(cursor, bytes):  # a reset
                yield cursor
                cursor = subscriber.start
            # A stream that starts with the last N takes them as they were kept when it
            # read them (items below the floor too); one that resumes takes all after.
            accepted = self._store.event_window().floor if request.last is not None else 0
            while cursor < subscriber.start:
                page = await self._store.events(
                    EventQuery(cursor, subscriber.start, request.filter, HISTORY_PAGE)
                )
                # The floor is raised before a pruning commits: if it is not above the
                # page's start now, nothing the page should hold had gone when it was read.
                if self._store.event_window().floor > max(cursor, accepted):
                    yield self._reset(f"events after {cursor} were pruned while being sent")
                    cursor = subscriber.start
                    break
                if page:
                    self.sent += len(page)
                    yield frames(page)
                cursor = page[-1].id if len(page) == HISTORY_PAGE else subscriber.start
            if not request.follow:
                return
            while True:
                batch = [e for e in await subscriber.next_batch(self._heartbeat_s) if e.id > cursor]
                if subscriber.cut_off is not None:
                    yield control_frame(CUTOFF, cursor, {"reason": subscriber.cut_off})
                    return
                if not batch:
                    yield b": keep-alive\n\n"
                    continue
                cursor = batch[-1].id
                self.sent += len(batch)
                yield frames(batch)
        finally:
            hub.unsubscribe(subscriber)

    async def _first_cursor(self) -> int | bytes:
        """Where the history starts, or a reset frame."""
        request, start = self._request, self.subscriber.start
        if request.last is not None:
            newest = await self._store.events(
                EventQuery(0, start, request.filter, request.last, last=True)
            )
            return newest[0].id - 1 if newest else start
        if request.after is None:
            return start
        window = self._store.event_window()
        if request.after < window.floor or request.after > window.head:
            why = (
                f"event {request.after} is older than the oldest kept ({window.floor + 1})"
                if request.after < window.floor
                else f"event {request.after} is newer than the newest ({window.head}): "
                "another store's cursor"
            )
            return self._reset(why)
        return request.after

    def _reset(self, why: str) -> bytes:
        start = self.subscriber.start
        return control_frame(
            RESET, start, {"reason": why, "reload": RELOAD, "continues_after": start}
        )
