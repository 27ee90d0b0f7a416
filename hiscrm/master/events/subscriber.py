"""One follower of the hub (a stream's client, a hook): the events it wants, buffered up
to a size, then cut off with a reason rather than let it hold the master up or grow."""

import asyncio
from collections import deque

from hiscrm.master.data.event_filter import EventFilter
from hiscrm.master.data.store import StoredEvent


class Subscriber:
    def __init__(self, event_filter: EventFilter, max_bytes: int, client: bool = True) -> None:
        self.filter = event_filter
        self.client = client  # a stream's client (not a hook)
        self.max_bytes = max_bytes
        self.start = 0  # set by the hub: it offers every event above this
        self.buffered: deque[StoredEvent] = deque()
        self.buffered_bytes = 0
        self.cut_off: str | None = None  # why it was cut off, if it was
        self._ready = asyncio.Event()

    def offer(self, events: list[StoredEvent]) -> bool:
        """Buffer what it wants of ``events``. A subscriber that has not taken what was
        buffered before, once that is over ``max_bytes``, is cut off: one offer may go
        beyond the limit (the hub reads events in pages), a client that keeps up never
        is cut off, and one that does not holds at most the limit and a page. True if
        this offer cut it off."""
        if self.cut_off is not None:
            return False
        if self.buffered_bytes > self.max_bytes:
            self.cut_off = (
                f"too slow: {len(self.buffered)} events ({self.buffered_bytes} bytes) waited "
                f"to be sent, more than {self.max_bytes} bytes; resume from the last event "
                "received"
            )
            self.buffered.clear()
            self.buffered_bytes = 0
            self._ready.set()
            return True
        for event in events:
            if event.id <= self.start or not self.filter.matches(event.name, event.account_id):
                continue
            self.buffered.append(event)
            self.buffered_bytes += len(event.data) + 64
        if self.buffered:
            self._ready.set()
        return False

    async def next_batch(self, timeout_s: float) -> list[StoredEvent]:
        """What is buffered (possibly nothing, after ``timeout_s``, or once cut off)."""
        if not self.buffered and self.cut_off is None:
            try:
                async with asyncio.timeout(timeout_s):
                    await self._ready.wait()
            except TimeoutError:
                return []
        self._ready.clear()
        batch = list(self.buffered)
        self.buffered.clear()
        self.buffered_bytes = 0
        return batch
