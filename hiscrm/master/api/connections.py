"""Limits on the API's connections: how many may be open, and how long a request may take
to arrive.

uvicorn waits for a request head as long as a client likes (its keep-alive timeout runs
only after a response), and its ``limit_concurrency`` acts only once a whole head has
arrived and then refuses requests on connections already open, so neither bounds what a
local process can make the master hold. :class:`GuardedH11Protocol`, a small subclass of
uvicorn's h11 protocol, adds:

* at most ``max_connections`` connections are open. At the limit, a new connection
  takes the place of the one that has waited longest without a whole request (the
  likeliest to be idle or hostile; a request being answered is never cut): that one is
  answered ``503`` if nothing was sent on it yet, and closed. If every connection has a
  request in progress, the new one is answered ``503`` and closed, unread;
* a request (head and body) must arrive within ``read_timeout_s`` of the connection
  opening, or of its first byte on a kept-alive connection; otherwise ``408`` and the
  connection is closed. An idle kept-alive connection is closed by uvicorn's own
  ``timeout_keep_alive``.

Each is counted and logged (the log rate-limits repeats). All of it is a few dictionary
and timer operations on the loop per connection: a flood of connections costs the
master little more than accepting them, and a client that sends its request at once is
answered meanwhile.
"""

import asyncio
import json
from typing import Any

import h11
import uvicorn
from structlog.typing import FilteringBoundLogger
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

WAITING_FOR_REQUEST = (h11.IDLE, h11.SEND_BODY)  # h11's states of the client while it sends


def _raw_response(status: str, error: str, extra_headers: str = "") -> bytes:
    body = json.dumps({"error": error, "detail": None}).encode()
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n{extra_headers}\r\n"
    )
    return head.encode() + body


class ConnectionLimits:
    """The limits, the connections waiting for a request (oldest first), and counts of
    what was cut: ``refused_total``, ``evicted_total``, ``read_timeouts_total``."""

    def __init__(self, max_connections: int, read_timeout_s: float, log: FilteringBoundLogger):
        self.max_connections = max_connections
        self.read_timeout_s = read_timeout_s
        self.refused_total = 0
        self.evicted_total = 0
        self.read_timeouts_total = 0
        self.open = 0  # connections open now (a gauge)
        self.waiting: dict[GuardedH11Protocol, None] = {}  # no request in progress, oldest first
        self._log = log
        self.too_many = _raw_response(
            "503 Service Unavailable",
            "too many connections (the limit: [api] max_connections, or what the fd limit "
            "leaves); try again later",
            "retry-after: 1\r\n",
        )
        self.too_slow = _raw_response(
            "408 Request Timeout", f"no whole request within {read_timeout_s:g} s"
        )

    def make_room(self) -> bool:
        """Close the connection that has waited longest for a request, if there is one."""
        victim = next(iter(self.waiting), None)
        if victim is None:
            return False
        del self.waiting[victim]
        self.evicted_total += 1
        self._log.warning(
            "API connection closed to make room: no whole request on it",
            client=victim.client,
            max_connections=self.max_connections,
            evicted_total=self.evicted_total,
        )
        victim.close_with(self.too_many)
        return True

    def refuse(self, client: Any) -> None:
        self.refused_total += 1
        self._log.warning(
            "API connection refused: too many open",
            client=client,
            max_connections=self.max_connections,
            refused_total=self.refused_total,
        )

    def timed_out(self, client: Any) -> None:
        self.read_timeouts_total += 1
        self._log.warning(
            "API connection closed: no whole request in time",
            client=client,
            timeout_s=self.read_timeout_s,
            read_timeouts_total=self.read_timeouts_total,
        )


class GuardedConfig(uvicorn.Config):
    """uvicorn's configuration, carrying the limits to every protocol instance."""

    def __init__(self, app: Any, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(app, http=GuardedH11Protocol, ws="none", **kwargs)
        self.limits = limits


class GuardedH11Protocol(H11Protocol):
    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        assert isinstance(config, GuardedConfig)
        self._limits = config.limits
        self._refused = False
        self._read_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        limits = self._limits
        if len(self.connections) >= limits.max_connections and not limits.make_room():
            self._refused = True
            transport.write(limits.too_many)
            transport.close()
            limits.refuse(transport.get_extra_info("peername"))
            return
        super().connection_made(transport)
        limits.open = len(self.connections)
        limits.waiting[self] = None
        self._arm_read_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        self._cancel_read_deadline()
        self._limits.waiting.pop(self, None)
        super().connection_lost(exc)
        self._limits.open = len(self.connections)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state in WAITING_FOR_REQUEST:
            self._arm_read_deadline()  # a request begun: it has until the deadline
        else:
            self._cancel_read_deadline()  # whole (or the connection is done)
        self._track()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._track()

    def _track(self) -> None:
        """Waiting for a request (kept in its place if it already was), or not."""
        if self.conn.their_state in WAITING_FOR_REQUEST and not self.transport.is_closing():
            self._limits.waiting.setdefault(self, None)
        else:
            self._limits.waiting.pop(self, None)

    def close_with(self, response: bytes) -> None:
        """Close now; ``response`` first if nothing has been sent on this request yet."""
        self._cancel_read_deadline()
        if self.conn.our_state is h11.IDLE:
            self.transport.write(response)
        self.transport.close()

    def _arm_read_deadline(self) -> None:
        if self._read_deadline is None:
            self._read_deadline = self.loop.call_later(
                self._limits.read_timeout_s, self._on_read_timeout
            )

    def _cancel_read_deadline(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _on_read_timeout(self) -> None:
        self._read_deadline = None
        if self.transport.is_closing() or self.conn.their_state not in WAITING_FOR_REQUEST:
            return
        self._limits.timed_out(self.client)
        self._limits.waiting.pop(self, None)
        self.close_with(self._limits.too_slow)
