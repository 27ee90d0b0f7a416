"""Reloading every worker in turn (``hiscrmctl reload``, ``POST /reload``, SIGHUP,
``--watch``), as steps the supervisor loop advances.

For each running worker slot:

1. *starting*: a replacement process starts beside the current one, with the code now
   on disk;
2. *handing over*: once the replacement has registered it becomes the slot's current
   process; each account is revoked from the old process (which stops the account's task
   and flushes its changes) and, when released, assigned to the new one. An account never
   has two processes; the gap (revoked → running again) is measured per account. If the
   old process dies meanwhile, its death releases what it held;
3. *stopping old*: the old process, now without accounts, is stopped.

A replacement that fails to start stops the whole reload: the old process keeps serving
and ``error`` says why. So does one that cannot load a platform the old process runs
(``worker:register``'s ``platform_errors``): it is stopped, as taking over would turn
running accounts into failed ones. A SIGTERM during a reload takes effect at once (the supervisor
drops the reload and stops every process).
"""

import asyncio
import re
from collections import deque
from enum import Enum
from typing import Any

import msgspec
from msgspec.structs import asdict
from structlog.typing import FilteringBoundLogger

from hiscrm.config import SupervisionConfig
from hiscrm.master.ports import AccountsPort
from hiscrm.master.supervision.platform_check import lost_platforms
from hiscrm.master.supervision.slot_process import ProcessState, SlotProcess
from hiscrm.master.supervision.stop_plan import AfterStop, StopReason
from hiscrm.master.supervision.worker_slot import WorkerSlot, WorkerState


class Phase(Enum):
    STARTING = "starting"
    HANDING_OVER = "handing_over"
    STOPPING_OLD = "stopping_old"


class Step(msgspec.Struct):
    worker: str
    old_pid: int | None
    new_pid: int | None
    state: str
    took_s: float
    accounts: int = 0
    max_gap_ms: float | None = None  # longest time an account had no running task


class Handover(msgspec.Struct):
    """The accounts of one slot moving from its old process to its new one."""

    accounts: list[str]
    pending: set[str]  # not released by the old process yet
    revoked_at: dict[str, float] = msgspec.field(default_factory=dict)
    released_at: dict[str, float] = msgspec.field(default_factory=dict)
    gaps_ms: dict[str, float] = msgspec.field(
        default_factory=dict
    )  # revoked -> running in the new one
    settled: set[str] = msgspec.field(
        default_factory=set
    )  # the new process reported a state for it

    def waiting_for(self) -> dict[str, list[str]]:
        """For the log: accounts not released by the old process, not taken up by the new."""
        return {
            "release": sorted(self.pending),
            "take_up": sorted(set(self.accounts) - self.settled - self.pending),
        }


class _Current(msgspec.Struct):
    slot: WorkerSlot
    old: SlotProcess | None
    new: SlotProcess
    began: float
    phase: Phase = Phase.STARTING
    handover: Handover | None = None
    deadline: float | None = None  # of the hand-over: then the old process is stopped anyway

    @property
    def old_pid(self) -> int | None:
        return self.old.pid if self.old is not None else None


class RollingReload:
    def __init__(
        self,
        slots: dict[str, WorkerSlot],
        accounts: AccountsPort,
        supervision: SupervisionConfig,
        log: FilteringBoundLogger,
        now: float,
        why: str,
    ) -> None:
        self.why = why  # SIGHUP, requested (API), --watch
        self._slots = slots
        self._accounts = accounts
        self._sup = supervision
        self._log = log
        self._pending = deque(slots)
        self._current: _Current | None = None
        self._waiters: list[asyncio.Future[RollingReload]] = []
        self.began = now
        self.ended: float | None = None
        self.steps: list[Step] = []
        self.error: str | None = None

    @property
    def done(self) -> bool:
        return self.ended is not None

    @property
    def deadline(self) -> float | None:
        """When the supervisor must call ``advance`` even if nothing happens."""
        return self._current.deadline if self._current is not None else None

    def when_done(self, reply: "asyncio.Future[Any]") -> None:
        """Answer ``reply`` with this reload once it has ended."""
        if self.done:
            reply.set_result(self)
        else:
            self._waiters.append(reply)

    def _end(self, now: float) -> None:
        self.ended = now
        for reply in self._waiters:
            if not reply.done():
                reply.set_result(self)
        self._waiters.clear()

    # --- events the supervisor routes here ------------------------------------------------

    def involves(self, process: SlotProcess) -> bool:
        current = self._current
        return current is not None and process in (current.old, current.new)

    def takes(self, process: SlotProcess, account_id: str) -> bool:
        """Whether ``process`` letting ``account_id`` go is part of the hand-over."""
        current = self._current
        return (
            current is not None
            and process is current.old
            and current.handover is not None
            and account_id in current.handover.pending
        )

    def on_released(self, process: SlotProcess, account_id: str, now: float) -> bool:
        """The old process let an account go; True if it was part of the hand-over."""
        current = self._current
        if current is None or not self.takes(process, account_id):
            return False
        self._hand_to_new(current, account_id, now)
        return True

    def on_account_state(
        self, process: SlotProcess, account_id: str, state: str, now: float
    ) -> None:
        current = self._current
        if current is None or process is not current.new or current.handover is None:
            return
        handover = current.handover
        if account_id in handover.released_at:
            handover.settled.add(account_id)
        if state != "running" or account_id not in handover.revoked_at:
            return
        if account_id in handover.gaps_ms:
            return
        gap_ms = (now - handover.revoked_at[account_id]) * 1000
        handover.gaps_ms[account_id] = gap_ms
        released = handover.released_at.get(account_id)
        self._log.info(
            "account handed over",
            worker=current.slot.id,
            account_id=account_id,
            old_pid=current.old_pid,
            new_pid=process.pid,
            gap_ms=round(gap_ms, 1),
            flush_ms=round((released - handover.revoked_at[account_id]) * 1000, 1)
            if released
            else None,
        )

    def held_by_old(self, process: SlotProcess) -> list[str]:
        """The accounts ``process``, the current step's old process, has not let go yet."""
        current = self._current
        if current is None or process is not current.old or current.handover is None:
            return []
        return sorted(current.handover.pending)

    def on_exited(self, process: SlotProcess, now: float) -> None:
        """A process of the current step died: the old one's death releases what it held."""
        current = self._current
        if current is None or process is not current.old or current.handover is None:
            return
        for account_id in sorted(current.handover.pending):
            self._hand_to_new(current, account_id, now)

    # --- stepping ------------------------------------------------------------------------

    async def advance(self, now: float) -> None:
        """Move on as far as the processes allow; returns when it has to wait."""
        while not self.done:
            if self._current is None:
                if not await self._begin_next(now):
                    return
                continue
            current = self._current
            if current.phase is Phase.STARTING:
                if current.slot.incoming is not current.new:  # it died before registering
                    self._fail(current, now)
                    return
                if current.new.state is not ProcessState.RUNNING:
                    return
                if self._lost_platforms(current, now):
                    return
                self._begin_handover(current, now)
            if current.phase is Phase.HANDING_OVER:
                handover = current.handover
                assert handover is not None
                if not self._handover_done(current):
                    if current.deadline is None or now < current.deadline:
                        return
                    self._log.error(
                        "reload: hand-over not finished in time; stopping the old process",
                        worker=current.slot.id,
                        old_pid=current.old_pid,
                        waiting_for=handover.waiting_for(),
                    )
                current.deadline = None
                current.slot.retire_outgoing(now)
                current.phase = Phase.STOPPING_OLD
            if current.phase is Phase.STOPPING_OLD:
                if current.slot.outgoing is not None:
                    return
                self._finish_step(current, now)

    async def _begin_next(self, now: float) -> bool:
        """Start the next slot's replacement; False when there is none left."""
        while self._pending:
            slot = self._slots.get(self._pending.popleft())
            if slot is None:
                continue
            if slot.state is not WorkerState.RUNNING:
                self._log.warning("reload: skipping worker", worker=slot.id, state=slot.state.value)
                continue
            self._log.info("reload: starting replacement", worker=slot.id, old_pid=slot.pid)
            try:
                new = await slot.start_incoming()
            except Exception as exc:  # fork/exec failed
                self._log.error("reload: cannot start a replacement", worker=slot.id, exc_info=exc)
                self.error = f"the new {slot.id} did not start ({exc}); the old one keeps serving"
                self.steps.append(Step(slot.id, slot.pid, None, "boot_failed", 0.0))
                self._end(now)
                return False
            self._current = _Current(slot, slot.current, new, now)
            return True
        self._log.info("reload complete", took_s=round(now - self.began, 3), steps=len(self.steps))
        self._end(now)
        return False

    def _begin_handover(self, current: _Current, now: float) -> None:
        slot = current.slot
        old = current.old = slot.promote()
        self._accounts.relink(current.new)
        accounts = self._accounts.accounts_of(slot.id)
        handover = current.handover = Handover(accounts, set(accounts))
        current.phase = Phase.HANDING_OVER
        current.deadline = now + self._sup.stop_timeout_s + self._sup.start_timeout_s
        self._log.info(
            "handing accounts over",
            worker=slot.id,
            old_pid=current.old_pid,
            new_pid=current.new.pid,
            accounts=accounts,
        )
        for account_id in accounts:
            handover.revoked_at[account_id] = now
            if old is not None and old.serving:
                self._accounts.revoke(old, account_id)
        if old is None:  # nothing holds them: straight to the new process
            for account_id in accounts:
                self._hand_to_new(current, account_id, now)
        elif not old.serving:  # starting or stopping: it cannot answer; its death releases
            slot.retire_outgoing(now)

    def _hand_to_new(self, current: _Current, account_id: str, now: float) -> None:
        handover = current.handover
        assert handover is not None
        handover.pending.discard(account_id)
        handover.released_at[account_id] = now
        self._accounts.assign(current.new, account_id)

    def _handover_done(self, current: _Current) -> bool:
        """Every account released by the old process and taken up by the new one (or the
        new one is gone, and the slot's restart takes the accounts)."""
        handover = current.handover
        assert handover is not None
        if handover.pending:
            return False
        return handover.settled >= set(handover.accounts) or not current.new.serving

    def _finish_step(self, current: _Current, now: float) -> None:
        handover = current.handover
        gaps = list(handover.gaps_ms.values()) if handover else []
        step = Step(
            worker=current.slot.id,
            old_pid=current.old_pid,
            new_pid=current.new.pid,
            state=current.slot.state.value,
            took_s=round(now - current.began, 3),
            accounts=len(handover.accounts) if handover else 0,
            max_gap_ms=round(max(gaps), 1) if gaps else None,
        )
        self.steps.append(step)
        self._current = None
        self._log.info("reload: worker replaced", **asdict(step))

    def _fail(self, current: _Current, now: float) -> None:
        record = current.slot.incoming_exit
        why = record.detail if record else "it stopped before registering"
        cause = _exception_line(record.log_tail if record else [])
        if cause:
            why = f"{why}: {cause}"
        self.error = f"the new {current.slot.id} did not start ({why}); the old one keeps serving"
        took_s = round(now - current.began, 3)
        self.steps.append(Step(current.slot.id, current.old_pid, None, "boot_failed", took_s))
        self._log.error(
            "reload stopped: a replacement did not start",
            worker=current.slot.id,
            reason=record.reason if record else None,
            left=list(self._pending),
            log_tail=record.log_tail if record else [],
        )
        self._current = None
        self._end(now)

    def _lost_platforms(self, current: _Current, now: float) -> bool:
        """If the replacement cannot load a platform the old process runs, it does not
        take over: it is stopped and the reload ends as if it had not started."""
        old = current.old.registered if current.old is not None else None
        new = current.new.registered
        lost = lost_platforms(old, new) if new is not None else {}
        if not lost:
            return False
        why = next(iter(lost.values())).strip().splitlines()[-1][:300]
        self.error = (
            f"the new {current.slot.id} cannot load platforms the old one runs ({why}); "
            "the old one keeps serving"
        )
        took_s = round(now - current.began, 3)
        self.steps.append(Step(current.slot.id, current.old_pid, None, "platform_failed", took_s))
        self._log.error(
            "reload stopped: a replacement cannot load its platforms",
            worker=current.slot.id,
            new_pid=current.new.pid,
            platforms=sorted(lost),
            reason=why,
            left=list(self._pending),
        )
        current.new.stop(StopReason.RELOAD, now, AfterStop.STAY_STOPPED)
        self._current = None
        self._end(now)
        return True

    def abandon(self, now: float) -> None:
        """Shutdown: every process will be stopped by the supervisor anyway."""
        self._current = None
        self.error = self.error or "interrupted by shutdown"
        self._end(now)


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Warning)\b")


def _exception_line(lines: list[str]) -> str | None:
    """The last 'SomeError: message' line of a log tail (a traceback's conclusion)."""
    for line in reversed(lines):
        if _EXCEPTION_LINE.match(line.strip()):
            return line.strip()[:300]
    return None
