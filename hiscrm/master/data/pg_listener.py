"""Hearing of other masters' events: a thread on a connection of its own that LISTENs on
``hiscrm_events`` (``pg_events.CHANNEL``), where every commit that gives out event ids
notifies its head, and raises this master's ``EventHead`` with it.

This master's own commits are heard too; ``EventHead.rise`` reports each head once. When
the connection is (re)made, the head is read from the counter after LISTEN, so nothing
committed while it was down goes unseen. A lost connection is logged (once, however many
tries fail after it), counted, and made again after a delay that grows to ``MAX_RETRY_S``.

Other channels can be heard on the same connection (``hear``: the commands routed
between masters, ``pg_commands``): their payloads go to a callback, in this thread, and
``on_connect`` is told each time LISTEN is in force again (what was missed meanwhile is
for the callback's owner to look up).
"""

import os
import selectors
import threading
from collections.abc import Callable

from structlog.typing import FilteringBoundLogger

from hiscrm.master.data import pg_events
from hiscrm.master.data.pg_events import EventHead
from hiscrm.master.data.pg_schema import Conn
from hiscrm.master.data.pg_writer import APPLICATION_NAME, connect

FIRST_RETRY_S = 0.5
MAX_RETRY_S = 10.0


class EventListener:
    def __init__(self, url: str, head: EventHead, log: FilteringBoundLogger) -> None:
        self._url = url
        self._head = head
        self._log = log
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = -1, -1
        self._thread = threading.Thread(target=self._run, name="store-listen", daemon=True)
        self.errors = 0
        self.listening = threading.Event()  # set while LISTEN is in force (for tests)
        self._others: dict[str, Callable[[str], None]] = {}  # channel -> its callback
        self._on_connect: list[Callable[[], None]] = []

    def hear(
        self,
        channel: str,
        callback: Callable[[str], None],
        on_connect: Callable[[], None] = lambda: None,
    ) -> None:
        """Before ``start``: also LISTEN on ``channel``; its payloads go to ``callback``
        (in the listener's thread, so it hands them on and returns)."""
        self._others[channel] = callback
        self._on_connect.append(on_connect)

    def start(self) -> None:
        self._wake_r, self._wake_w = os.pipe()
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._wake_w < 0:
            return  # never started
        self._stopping.set()
        os.write(self._wake_w, b"x")
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._log.error("store listener did not finish in time", timeout_s=timeout_s)
            return
        os.close(self._wake_r)
        os.close(self._wake_w)
        self._wake_r = self._wake_w = -1

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        delay, failures = FIRST_RETRY_S, 0  # failures: tries in a row that failed
        while not self._stopping.is_set():
            conn: Conn | None = None
            try:
                conn = connect(self._url, f"{APPLICATION_NAME}-listen")
                conn.execute(f"LISTEN {pg_events.CHANNEL}")
                for channel in self._others:
                    conn.execute(f"LISTEN {channel}")
                self._head.rise(pg_events.stored_head(conn))
                self.listening.set()
                for connected in self._on_connect:
                    connected()
                if failures:
                    self._log.warning("store listener connected again", failed_tries=failures)
                delay, failures = FIRST_RETRY_S, 0
                self._listen(conn)
            except Exception as exc:  # the server, or a bug: said, counted, and tried again
                self.errors += 1
                failures += 1
                if failures == 1:  # once per episode; the tries that follow are counted
                    self._log.error(
                        "store listener failed; connecting again",
                        retry_in_s=delay,
                        errors=self.errors,
                        exc_info=exc,
                    )
                self._stopping.wait(delay)
                delay = min(delay * 2, MAX_RETRY_S)
            finally:
                self.listening.clear()
                if conn is not None:
                    conn.close()

    def _listen(self, conn: Conn) -> None:
        """Until stopped, or the connection fails (raised)."""
        with selectors.DefaultSelector() as selector:
            selector.register(conn.fileno(), selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping.is_set():
                for notify in conn.notifies(timeout=0):  # what has come in (or was held)
                    other = self._others.get(notify.channel)
                    if other is not None:
                        other(notify.payload)
                    else:
                        self._heard(notify.payload)
                selector.select()

    def _heard(self, payload: str) -> None:
        try:
            head = int(payload)
        except ValueError:
            self.errors += 1
            self._log.error(
                "store listener: a notification that is not an event id",
                channel=pg_events.CHANNEL,
                payload=payload[:100],
            )
            return
        self._head.rise(head)
