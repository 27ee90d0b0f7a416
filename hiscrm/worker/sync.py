"""The one path by which data leaves a worker: ``worker:data:sync`` per account, answered
by ``master:data:ack`` once the store has committed it.

* A new inbound message or comment is flushed at once (after a few ms, so a burst goes
  out together); other changes go with the next regular flush, once a second.
* An account with nothing new sends an empty sync about every ``idle_sync_s`` (see
  ``beat.idle_due``), so the master can tell a quiet account from one whose sync path is
  broken. Ticks and idle syncs fall on the host's beat (``beat``): every worker's go out
  together, and the master commits them together.
* At most ``WINDOW_BYTES`` per account are in flight (sent, not yet acknowledged); each
  acknowledgement lets the next changes go. So the master's queue stays bounded however
  fast platforms produce, and a worker that outruns the store sees its backlog grow
  (``ctx.pending()``) instead of the master's memory.
* Changes stay pending (and in the spool) until acknowledged. After ``ack_timeout_s``
  without an acknowledgement, or on a ``master:data:nack``, everything pending is sent
  again; the store ignores what it already has.
"""

import asyncio
from collections import deque
from collections.abc import Callable

from structlog.typing import FilteringBoundLogger

from hiscrm.beat import idle_due, next_beat
from hiscrm.protocol import Encoder, sync_batches
from hiscrm.worker.account_data import AccountData

URGENT_DEBOUNCE_S = 0.005
FLUSH_INTERVAL_S = 1.0
WINDOW_BYTES = 256 * 1024  # per account, sent and not yet acknowledged
MAX_QUEUED_BYTES = 8 * 1024 * 1024  # stop adding to the pipe while this much waits in it


class Syncer:
    def __init__(
        self,
        send: Callable[[bytes], bool],
        queued_bytes: Callable[[], int],
        encoder: Encoder,  # the worker's one: envelope ids go up across every frame it sends
        *,
        ack_timeout_s: float,
        idle_sync_s: float,
        log: FilteringBoundLogger,
    ) -> None:
        self._send = send
        self._queued_bytes = queued_bytes
        self._encoder = encoder
        self._ack_timeout_s = ack_timeout_s
        self._idle_sync_s = idle_sync_s
        self._log = log
        self.accounts: dict[str, AccountData] = {}
        self._urgent: set[str] = set()
        self._wake = asyncio.Event()
        self._last_sent: dict[str, float] = {}
        self._unacked_since: dict[str, float] = {}
        self._in_flight: dict[str, deque[tuple[int, int]]] = {}  # (last seq, bytes) per sync
        self._acked = asyncio.Event()  # set on every ack; flush_and_wait watches it
        self.syncs_sent = 0
        self.bytes_sent = 0
        self.resends = 0
        self.nacks = 0

    def counters(self) -> dict[str, int]:
        return {
            "messages": self.syncs_sent,
            "bytes": self.bytes_sent,
            "resends": self.resends,
            "nacks": self.nacks,
        }

    def add(self, data: AccountData) -> None:
        self.accounts[data.account_id] = data

    def remove(self, account_id: str) -> AccountData | None:
        self._urgent.discard(account_id)
        self._last_sent.pop(account_id, None)
        self._unacked_since.pop(account_id, None)
        self._in_flight.pop(account_id, None)
        return self.accounts.pop(account_id, None)

    def changed(self, account_id: str, urgent: bool) -> None:
        if urgent:
            self._urgent.add(account_id)
            self._wake.set()

    # --- the loop ------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_tick = next_beat(loop.time(), FLUSH_INTERVAL_S)
        while True:
            wait = next_tick - loop.time()
            if wait > 0 and not self._wake.is_set():
                try:
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
                except TimeoutError:
                    pass  # time for the regular flush
            if self._wake.is_set():
                await asyncio.sleep(URGENT_DEBOUNCE_S)
                self._wake.clear()
                urgent, self._urgent = self._urgent, set()
                for account_id in urgent:
                    self.flush(account_id, loop.time())
            now = loop.time()
            if now >= next_tick:
                next_tick = next_beat(now, FLUSH_INTERVAL_S)
                self.tick(now)

    def tick(self, now: float) -> None:
        for account_id, data in list(self.accounts.items()):
            since = self._unacked_since.get(account_id)
            if since is not None and now - since > self._ack_timeout_s:
                self.resends += 1
                self._log.warning(
                    "no acknowledgement in time; sending pending changes again",
                    account_id=account_id,
                    from_seq=data.acked_seq,
                    pending=data.unacked,
                    ack_timeout_s=self._ack_timeout_s,
                )
                self._go_back(data)
            self.flush(account_id, now)
            if idle_due(now, self._last_sent.get(account_id), self._idle_sync_s):
                self._send_batches(data, [], data.sent_seq, now)

    # --- sending -------------------------------------------------------------------------

    def flush(self, account_id: str, now: float) -> None:
        """Send unsent changes, as far as the window allows; the rest goes as
        acknowledgements come back."""
        data = self.accounts.get(account_id)
        if data is None or self._queued_bytes() > MAX_QUEUED_BYTES:
            return  # the next tick tries again once the master has caught up
        in_flight = self._in_flight.setdefault(account_id, deque())
        room = WINDOW_BYTES - sum(size for _, size in in_flight)
        if room <= 0 or not data.unsent:
            return
        base = data.sent_seq
        self._send_batches(data, data.take(room), base, now)

    def resend_from(self, account_id: str, from_seq: int, now: float) -> int:
        """Send every item changed after ``from_seq`` again, as it is now. Never from later
        than the last acknowledgement: what was not acknowledged goes too."""
        data = self.accounts.get(account_id)
        if data is None:
            return 0
        from_seq = min(from_seq, data.acked_seq)
        unreadable = data.unreadable
        changes = data.changed_after(from_seq)
        floor = data.resend_floor
        if floor > from_seq + 1 or data.unreadable > unreadable:
            self._log.warning(
                "resend: changes before the spool's oldest are not sent again",
                account_id=account_id,
                from_seq=from_seq,
                spool_from_seq=floor,
                unreadable_lines=data.unreadable - unreadable,
            )
        self._send_batches(data, changes, min(from_seq, data.sent_seq), now)
        data.mark_all_sent()
        return len(changes)

    def _send_batches(
        self, data: AccountData, changes: list[tuple[int, bytes]], base: int, now: float
    ) -> None:
        in_flight = self._in_flight.setdefault(data.account_id, deque())
        for batch in sync_batches(changes) or [[]]:
            last = batch[-1][0] if batch else base
            frame = self._encoder.encode_sync(data.account_id, base, last, [c for _, c in batch])
            if not self._send(frame):
                return  # the pipe is closed; the master's death ends this worker soon
            self.syncs_sent += 1
            self.bytes_sent += len(frame)
            if batch:
                in_flight.append((last, len(frame)))
            base = last
        self._last_sent[data.account_id] = now
        if data.sent_seq > data.acked_seq or changes:
            self._unacked_since.setdefault(data.account_id, now)

    # --- answers from the master ---------------------------------------------------------

    def on_ack(self, account_id: str, seq: int, now: float) -> None:
        data = self.accounts.get(account_id)
        if data is None:
            return
        data.on_ack(seq)
        in_flight = self._in_flight.get(account_id)
        while in_flight and in_flight[0][0] <= seq:
            in_flight.popleft()
        if data.acked_seq >= data.sent_seq:
            self._unacked_since.pop(account_id, None)
        else:
            self._unacked_since[account_id] = now  # progress: restart the clock
        self._acked.set()
        self._acked.clear()
        self.flush(account_id, now)  # the window has room again

    def on_nack(self, account_id: str, seq: int, reason: str) -> None:
        data = self.accounts.get(account_id)
        if data is None or seq <= data.acked_seq:  # about a sync acknowledged since: stale
            return
        self.nacks += 1
        self._log.warning(
            "sync refused by the master; sending pending changes again",
            account_id=account_id,
            seq=seq,
            reason=reason,
            from_seq=data.acked_seq,
        )
        self._go_back(data)

    def _go_back(self, data: AccountData) -> None:
        """Forget what is in flight; the next flush sends everything pending again."""
        data.resend_unacked()
        self._unacked_since.pop(data.account_id, None)
        self._in_flight.pop(data.account_id, None)

    async def flush_and_wait(self, account_ids: list[str], timeout_s: float) -> dict[str, int]:
        """Send what is pending and wait (up to ``timeout_s``) until the master has it;
        returns the changes still unacknowledged per account."""
        loop = asyncio.get_running_loop()
        for account_id in account_ids:
            self.flush(account_id, loop.time())
        deadline = loop.time() + timeout_s

        def left() -> dict[str, int]:
            return {
                a: self.accounts[a].unacked
                for a in account_ids
                if a in self.accounts and self.accounts[a].unacked
            }

        while (remaining := left()) and loop.time() < deadline:
            acked = asyncio.ensure_future(self._acked.wait())
            try:
                await asyncio.wait({acked}, timeout=min(0.2, max(0.0, deadline - loop.time())))
            finally:
                acked.cancel()
            for account_id in remaining:  # a change made meanwhile, or a nack: send again
                self.flush(account_id, loop.time())
        return left()
