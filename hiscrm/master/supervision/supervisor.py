"""The master's one loop: it owns every worker slot and is the only code that changes them.

Pipes, process exits, signals and operator commands post events to one queue (see
``events``); the loop takes them one at a time and otherwise sleeps until the nearest
deadline (a heartbeat expiring, a backoff ending, a stop escalating, an account going
stale or due to move). There is no polling. The data wing is reached through
``AccountsPort`` only.
"""

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import psutil
from structlog.typing import FilteringBoundLogger

from hiscrm import __version__
from hiscrm.config import Config
from hiscrm.error_counter import ErrorCounter
from hiscrm.exit_codes import ExitCode
from hiscrm.items import epoch_ms
from hiscrm.master.ports import AccountsPort, EventSink
from hiscrm.master.supervision.code_status import CodeStatus
from hiscrm.master.supervision.commands import (
    AddAccount,
    ApplyConfig,
    ChangeAccount,
    Command,
    CommandRefused,
    CommandRequest,
    ReleaseAccount,
    ReloadWorkers,
    RemoveAccount,
    RestartWorker,
    ShutDown,
    StartWorker,
    StopWorker,
    SyncAccount,
)
from hiscrm.master.supervision.events import (
    ChannelClosed,
    DeadlinesChanged,
    Event,
    FrameReceived,
    ProcessExited,
    SignalReceived,
)
from hiscrm.master.supervision.launcher import Launcher
from hiscrm.master.supervision.memory_watch import MemoryMeasured, MemoryWatch, slot_limit_bytes
from hiscrm.master.supervision.orphans import EscapedProcesses
from hiscrm.master.supervision.rolling_reload import RollingReload
from hiscrm.master.supervision.slot_process import SlotProcess
from hiscrm.master.supervision.stop_plan import StopReason
from hiscrm.master.supervision.worker_slot import SETTLED, Role, WorkerSlot, WorkerState
from hiscrm.protocol import (
    ProtocolError,
    ProtocolErrorKind,
    WorkerAccountReleased,
    WorkerAccountState,
    WorkerDataSync,
    WorkerError,
    WorkerGoodbye,
    WorkerHeartbeat,
    WorkerRegister,
    WorkerSendResult,
)
from hiscrm.sync_wire import WireSync, decode_from_worker

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
ORPHAN_SCAN_DELAY_S = 0.1  # SIGCHLD -> reaping adopted orphans
STALL_S = 0.5  # the loop ran this much later than it should have: the master was stalled
FRAMING, INVALID = ProtocolErrorKind.FRAMING, ProtocolErrorKind.INVALID
WAITING = (WorkerState.STOPPED, WorkerState.BACKOFF, WorkerState.BOOT_FAILED)  # no process


class Supervisor:
    def __init__(
        self,
        config: Config,
        launcher: Launcher,
        accounts: AccountsPort,
        log: FilteringBoundLogger,
        errors: ErrorCounter | None = None,
        publish: EventSink = lambda event, data: None,
    ) -> None:
        self.config = config
        self._log = log
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._launcher = launcher
        self.accounts = accounts
        accounts.wake_with(lambda: self.post(DeadlinesChanged()))
        self._publish = publish
        # What SIGHUP does beyond a rolling reload (the app re-reads the config first).
        self.on_hangup: Callable[[], Coroutine[Any, Any, None]] | None = None
        self.started_at_ms = epoch_ms()
        self.slots: dict[str, WorkerSlot] = {w: self._new_slot(w) for w in config.worker_ids}
        self._slots_wanted: list[str] | None = None  # as last reconciled
        self._slots_leaving: set[str] = set()  # no longer wanted, not removed yet
        self.code = CodeStatus(config.code.packages, config.platform_specs)
        self.protocol_errors_total = 0
        self.count_internal_error = errors or ErrorCounter()
        self.memory = MemoryWatch(log, self.count_internal_error)
        self.orphans_reaped = 0
        self.stalls = 0  # times the master found itself stalled
        self.escaped = EscapedProcesses(log)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._shutdown_reason: str | None = None
        self._killed_workers = False  # a second signal killed them: exit non-zero
        self._reload: RollingReload | None = None
        self.last_reload: RollingReload | None = None
        self._orphan_scan: asyncio.TimerHandle | None = None
        self._waiting: dict[str, list[CommandRequest]] = {}  # slot id -> commands to answer
        # The nearest deadline as last computed; a heartbeat only moves deadlines later, so
        # after one it still holds (waking at it early is harmless: all are looked at then).
        self._wake_at: float | None = None
        self._wake_known = False

    def post(self, event: Event) -> None:
        self._events.put_nowait(event)

    @property
    def launcher(self) -> Launcher:
        return self._launcher

    def now(self) -> float:
        return self._loop.time() if self._loop is not None else time.monotonic()

    @property
    def shutting_down(self) -> bool:
        return self._shutdown_reason is not None

    async def command(self, command: Command) -> Any:
        """Carry out an operator's command in the loop; returns once it has settled: the
        WorkerSlot for start/stop/restart, the RollingReload for a reload, the worker id
        for a sync request. CommandRefused says why it cannot be done."""
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.post(CommandRequest(command, reply))
        return await reply

    @property
    def internal_errors_total(self) -> int:
        return self.count_internal_error.total

    def worker_code_files(self) -> set[str]:
        """The files the running worker processes reported they loaded."""
        return {
            f.path
            for slot in self.slots.values()
            for process in slot.processes()
            if process.registered is not None
            for f in process.registered.code_files
        }

    # --- the loop ------------------------------------------------------------------------

    async def run(
        self,
        on_ready: Callable[[], Awaitable[None]] | None = None,
        on_stopped: Callable[[], Awaitable[None]] | None = None,
        on_started: Callable[[], Awaitable[None]] | None = None,
        on_prepared: Callable[[], Awaitable[None]] | None = None,
    ) -> int:
        """Run until shut down. ``on_ready`` runs before workers start, ``on_prepared``
        once the launcher is ready to start them (the template is), ``on_started`` once
        they have been started, ``on_stopped`` once every worker has stopped."""
        loop = self._loop = asyncio.get_running_loop()
        loop.set_exception_handler(self._on_loop_exception)
        self._log.info(
            "master starting",
            pid=os.getpid(),
            version=__version__,
            state_dir=str(self.config.state_dir),
            workers=len(self.slots),
            accounts=len(self.config.accounts),
        )
        for sig in HANDLED_SIGNALS:
            loop.add_signal_handler(sig, self.post, SignalReceived(sig))
        loop.add_signal_handler(signal.SIGCHLD, self._schedule_orphan_reaping)
        try:
            if on_ready is not None:
                await on_ready()
            if self.slots:
                sample = next(iter(self.slots.values())).boot()
                await self._launcher.prepare(sample, self.count_internal_error)
            if on_prepared is not None:
                await on_prepared()
            # All at once: the template forks them back to back, no round trip between.
            now = loop.time()
            await asyncio.gather(*(s.start(now, "master started") for s in self.slots.values()))
            self.memory.start(loop.time())
            if on_started is not None:
                await on_started()
            while not self._finished():
                event = await self._next_event()
                await self._step(event)
            if on_stopped is not None:
                await on_stopped()
        finally:
            for sig in (*HANDLED_SIGNALS, signal.SIGCHLD):
                loop.remove_signal_handler(sig)
            if self._orphan_scan is not None:
                self._orphan_scan.cancel()
            self._launcher.stop()
        if self._killed_workers:
            self._log.warning(
                "master stopped after killing its workers (a second signal)",
                reason=self._shutdown_reason,
            )
            return ExitCode.KILLED_WORKERS
        self._log.info("master stopped", reason=self._shutdown_reason)
        return ExitCode.OK

    def _schedule_orphan_reaping(self) -> None:
        """SIGCHLD: reap orphans a little later, in one pass for a burst of signals and
        off the path of a respawn (the scan reads /proc: a millisecond or more)."""
        if self._orphan_scan is None:
            self._orphan_scan = asyncio.get_running_loop().call_later(
                ORPHAN_SCAN_DELAY_S, self._reap_orphans
            )

    def _reap_orphans(self) -> None:
        """Reap children nobody else will. As a child subreaper the master adopts what
        escapes a dead worker's process group; once killed, they must be reaped."""
        self._orphan_scan = None
        known = self._own_children()
        self.escaped.scan(self._own_children)
        for child in psutil.Process().children():
            try:
                if child.pid in known or child.status() != psutil.STATUS_ZOMBIE:
                    continue
                os.waitpid(child.pid, os.WNOHANG)
            except (psutil.NoSuchProcess, ChildProcessError):
                continue
            self.orphans_reaped += 1
            self._log.info(
                "reaped an adopted orphan", pid=child.pid, orphans_reaped=self.orphans_reaped
            )

    def _own_children(self) -> set[int]:
        """The master's children that are its own: workers, templates, spares."""
        known = {p.pid for slot in self.slots.values() for p in slot.processes()}
        return known | self._launcher.known_pids()

    def _finished(self) -> bool:
        return self._shutdown_reason is not None and all(s.idle for s in self.slots.values())

    def _deadlines(self) -> list[float]:
        deadlines = [s.deadline for s in self.slots.values() if s.deadline is not None]
        if (due := self.accounts.next_deadline()) is not None:
            deadlines.append(due)
        if self._reload is not None and (due := self._reload.deadline) is not None:
            deadlines.append(due)
        if (due := self._memory_deadline()) is not None:
            deadlines.append(due)
        return deadlines

    async def _next_event(self) -> Event | None:
        if not self._events.empty():
            return self._events.get_nowait()
        if not self._wake_known:
            self._wake_at = min(self._deadlines(), default=None)
            self._wake_known = True
        wake_at = self._wake_at
        if wake_at is None:
            return await self._events.get()
        try:
            async with asyncio.timeout_at(wake_at):
                return await self._events.get()
        except TimeoutError:
            return None
        finally:
            late = asyncio.get_running_loop().time() - wake_at
            if late > STALL_S:
                self._allow_for_stall(late, "woke up late")

    def _allow_for_stall(self, stall_s: float, how: str) -> None:
        """The master itself did not run for a while (stopped, swapped out, a step that
        took long): what workers sent meanwhile waits unread in the pipes, so their
        heartbeats cannot be judged until it has been read. Running workers get a whole
        heartbeat timeout from now, starting ones the time the master lost."""
        self.stalls += 1
        self._log.warning(
            "the master itself was stalled; allowing for it before judging heartbeats",
            stall_s=round(stall_s, 3),
            how=how,
            stalls_total=self.stalls,
        )
        now = asyncio.get_running_loop().time()
        self._wake_known = False
        for slot in self.slots.values():
            slot.allow_for_stall(now, stall_s)

    async def _step(self, event: Event | None) -> None:
        """Handle one event, then whatever deadlines are due. A bug here is logged and
        counted; it never takes the master down."""
        loop = asyncio.get_running_loop()
        try:
            began = loop.time()
            later_only = event is not None and await self._handle(event, began)
            now = loop.time()
            # Before any deadline is judged: a step that waited long (or a master stopped
            # meanwhile) has left what the workers sent unread.
            if now - began > STALL_S:
                self._allow_for_stall(now - began, "a step took long")
            if later_only and self._nothing_due(now):
                return  # a heartbeat: no deadline came nearer, none is due
            self._wake_known = False
            for slot in list(self.slots.values()):
                if slot.deadline is not None and slot.deadline <= now:
                    await slot.on_deadline(now)
            due = self.accounts.next_deadline()
            if due is not None and due <= now:
                self.accounts.on_deadline(now)
            if self._reload is not None and not self._reload.done:
                await self._reload.advance(loop.time())
            await self._reconcile_slots(loop.time())
            self._begin_memory_pass(loop.time())
            if (took := loop.time() - now) > STALL_S:
                self._allow_for_stall(took, "judging deadlines took long")
        except Exception as exc:
            self._log.error(
                "master error while handling an event",
                during=repr(event)[:200],
                internal_errors_total=self.count_internal_error(),
                exc_info=exc,
            )

    def _nothing_due(self, now: float) -> bool:
        """After an event that only moved deadlines later: whether the whole pass over
        the deadlines can be skipped (none was due at the last look, none is due now, and
        no stepped operation waits to be advanced)."""
        return (
            self._wake_known
            and self._wake_at is not None
            and now < self._wake_at
            and self._shutdown_reason is None
            and (self._reload is None or self._reload.done)
        )

    async def _reconcile_slots(self, now: float) -> None:
        """The slots that should exist: the configured workers and one solo worker per
        quarantined account (the data wing's ``solo_workers``). Missing ones start; those
        no longer wanted are stopped once they hold no account, then removed."""
        wanted = [*self.config.worker_ids, *self.accounts.solo_workers()]
        if wanted == self._slots_wanted and not self._slots_leaving:
            return
        self._slots_wanted = wanted
        if self._shutdown_reason is None:
            for worker_id in wanted:
                if worker_id not in self.slots:
                    slot = self.slots[worker_id] = self._new_slot(worker_id)
                    self._slots_leaving.discard(worker_id)
                    why = "configured" if worker_id in self.config.worker_ids else "quarantine"
                    await slot.start(now, f"new worker ({why})")
        for worker_id in [w for w in self.slots if w not in wanted]:
            slot = self.slots[worker_id]
            self._slots_leaving.add(worker_id)
            if self.accounts.holds(worker_id):
                continue  # its accounts are on their way elsewhere
            if slot.idle:
                del self.slots[worker_id]
                self._slots_leaving.discard(worker_id)
                self._log.info("worker removed: no longer wanted", worker=worker_id)
                self._publish("worker.removed", {"worker": worker_id})
            elif slot.state not in (WorkerState.STOPPING, WorkerState.STOPPED):
                await slot.request_stop(StopReason.STOP, now, restart=False)

    def _reconfigure(self, config: Config, now: float) -> None:
        """Settings for the decisions that follow, and the configured workers: new ones
        start (from the next step), and removed ones are stopped once their accounts have
        moved (see ``_reconcile_slots``)."""
        old = self.config.worker_ids
        self.config = config
        for slot in self.slots.values():
            slot.reconfigure(config)
        if config.worker_ids != old:
            self._log.info("workers changed", old=len(old), new=len(config.worker_ids))
            self.accounts.set_workers(config.worker_ids, now)
        self._slots_wanted = None  # look again at which slots should exist

    def _hangup_done(self, task: "asyncio.Task[None]") -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._log.error(
                "SIGHUP handling failed",
                internal_errors_total=self.count_internal_error(),
                exc_info=exc,
            )

    # --- the memory limit (see memory_watch) ---------------------------------------------

    def _memory_deadline(self) -> float | None:
        return None if self.shutting_down else self.memory.deadline

    def _serving(self) -> dict[str, int]:
        """Worker id -> pid of each slot whose current process is registered and not
        being stopped: what the memory watch measures and may restart."""
        return {
            worker_id: slot.current.pid
            for worker_id, slot in self.slots.items()
            if slot.current is not None and slot.current.serving
        }

    def memory_limit_bytes(self, worker_id: str) -> int | None:
        """The slot's memory limit (None: none): a quarantined account's own
        ``max_memory_mb`` in the worker it runs alone in, else ``[supervision]
        max_memory_mb`` (``slot_limit_bytes``)."""
        own_mb = self.accounts.memory_limit_mb(worker_id)
        return slot_limit_bytes(own_mb, self.config.supervision.max_memory_mb)

    def _memory_limits(self) -> dict[str, int | None]:
        return {worker_id: self.memory_limit_bytes(worker_id) for worker_id in self.slots}

    def _begin_memory_pass(self, now: float) -> None:
        if self.shutting_down or self.memory.deadline is None:
            return  # a pass is under way
        limits = self._memory_limits()
        if self.memory.due(now, any(limit is not None for limit in limits.values())):
            self.memory.begin(self._serving(), limits, now, self.post)

    async def _on_memory_measured(self, event: MemoryMeasured, now: float) -> None:
        """A pass has measured the workers' trees: restart those over their limit."""
        for over in self.memory.on_measured(event, now, self._serving(), self._memory_limits()):
            if self.shutting_down:
                return
            if self._reload is not None and not self._reload.done:
                self._log.warning(
                    "worker over its memory limit; the reload under way replaces it",
                    **over.fields(),
                )
                continue
            self._log.warning(
                "worker over its memory limit; restarting it gracefully", **over.fields()
            )
            slot = self.slots[over.worker_id]
            await slot.request_stop(StopReason.MEMORY_LIMIT, now, restart=True)

    def _new_slot(self, worker_id: str) -> WorkerSlot:
        return WorkerSlot(
            worker_id,
            self.config,
            self._launcher,
            self.post,
            self._log,
            on_state=self._slot_changed,
            platforms=self.accounts.platform_specs,
        )

    def _on_loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        self._log.error(
            "master event loop error",
            message=context.get("message"),
            internal_errors_total=self.count_internal_error(),
            exc_info=exc if isinstance(exc, BaseException) else None,
        )

    # --- events --------------------------------------------------------------------------

    def _find(self, worker_id: str, pid: int) -> tuple[WorkerSlot, SlotProcess] | None:
        """The slot and process an event came from; None for a process since replaced."""
        slot = self.slots.get(worker_id)
        process = slot.process(pid) if slot is not None else None
        return None if slot is None or process is None else (slot, process)

    async def _handle(self, event: Event, now: float) -> bool:
        """Handle one event; True if it can only have moved deadlines later (a heartbeat)."""
        match event:
            case FrameReceived(worker_id, pid, data):
                if (found := self._find(worker_id, pid)) is not None:
                    return await self._on_frame(*found, data, now)
            case ProcessExited(worker_id, pid):
                if (found := self._find(worker_id, pid)) is not None:
                    await self._on_exit(*found, now)
            case ChannelClosed(worker_id, pid, error):
                # A clean end of stream means the worker is exiting; its exit follows.
                # A broken frame means the stream cannot be trusted: replace the worker.
                found = self._find(worker_id, pid)
                if found is not None and error is not None:
                    slot, process = found
                    self._protocol_error(slot, process, FRAMING, str(error), b"")
                    if slot.role(process) is Role.CURRENT:
                        restart = self._shutdown_reason is None
                        await slot.request_stop(StopReason.PROTOCOL_ERROR, now, restart=restart)
            case CommandRequest():
                await self._on_command(event, now)
            case SignalReceived(signum):
                await self._on_signal(signal.Signals(signum), now)
            case MemoryMeasured():
                await self._on_memory_measured(event, now)
            case DeadlinesChanged():
                pass  # the loop looks at every deadline again after each event
        return False

    async def _on_exit(self, slot: WorkerSlot, process: SlotProcess, now: float) -> None:
        role = slot.role(process)
        was_serving = process.registered is not None
        record = await slot.on_exit(process, now)
        self._publish(
            "worker.exit",
            {"worker": slot.id, "pid": process.pid, "role": str(role), **record.model_dump()},
        )
        if role is Role.CURRENT and was_serving:
            self.accounts.worker_down(slot.id, now, record.may_be_an_accounts_doing)
        elif self._reload is not None:
            for account_id in self._reload.held_by_old(process):
                self.accounts.handed_over(process, account_id, "died during a reload")
            self._reload.on_exited(process, now)

    async def _on_frame(
        self, slot: WorkerSlot, process: SlotProcess, data: bytes, now: float
    ) -> bool:
        """Handle one message; True for a heartbeat (it only moves deadlines later)."""
        try:
            message = decode_from_worker(data)
        except ProtocolError as exc:
            self._protocol_error(slot, process, exc.kind, exc.detail, exc.head)
            return False
        match message:
            case WorkerHeartbeat():
                slot.heartbeat(process, message, now)
                self.accounts.on_heartbeat(process, message, now)
                return True
            case WireSync() | WorkerDataSync():
                self.accounts.on_sync(process, message)
            case WorkerSendResult():
                self.accounts.on_send_result(process, message)
            case WorkerAccountReleased():
                reload = self._reload
                if reload is not None and reload.takes(process, message.account_id):
                    # First what the old process was sending, then the hand-over: the
                    # replacement may be sent the account's next replies at once.
                    self.accounts.handed_over(
                        process, message.account_id, "handed the account to its replacement"
                    )
                    reload.on_released(process, message.account_id, now)
                else:
                    self.accounts.on_released(process, message, now)
            case WorkerRegister() if process.stop_plan is not None:
                self._log.info(
                    "registration ignored: worker is being stopped", worker=slot.id, pid=process.pid
                )
            case WorkerRegister():
                if process.registered is not None or message.worker_id != slot.id:
                    detail = f"unexpected registration as {message.worker_id!r}"
                    self._protocol_error(slot, process, INVALID, detail, data[:80])
                    return False
                self.accounts.platforms_reported(message.idempotent_platforms)
                # A reload's incoming process gets its accounts by hand-over.
                if slot.register(process, message, now) and slot.role(process) is Role.CURRENT:
                    self.accounts.worker_up(process, now)
                self.memory.new_worker(now)
            case WorkerError():
                slot.worker_errors += 1
                self.accounts.on_worker_error(process, message)
                self._log.error(
                    "worker error",
                    worker=slot.id,
                    pid=process.pid,
                    source=message.source,
                    account_id=message.account_id,
                    error=message.summary,
                    worker_errors_total=slot.worker_errors,
                    traceback=message.traceback,
                )
            case WorkerAccountState():  # the worker logged it; kept for status
                self.accounts.on_account_state(process, message, now)
                if self._reload is not None:
                    self._reload.on_account_state(process, message.account_id, message.state, now)
            case WorkerGoodbye():
                self._log.info(
                    "worker says goodbye", worker=slot.id, pid=process.pid, reason=message.reason
                )
            case _:
                detail = f"{message.type} is not for the master"
                self._protocol_error(slot, process, INVALID, detail, data[:80])
        return False

    def _protocol_error(
        self,
        slot: WorkerSlot,
        process: SlotProcess,
        kind: ProtocolErrorKind,
        detail: str,
        head: bytes,
    ) -> None:
        slot.protocol_errors[kind] = slot.protocol_errors.get(kind, 0) + 1
        self.protocol_errors_total += 1
        self._log.error(
            "protocol error",
            worker=slot.id,
            pid=process.pid,
            kind=kind,
            detail=detail,
            first_bytes=repr(head),
            protocol_errors_total=self.protocol_errors_total,
        )

    # --- operator commands ---------------------------------------------------------------

    async def _on_command(self, request: CommandRequest, now: float) -> None:
        try:
            await self._carry_out(request, now)
        except CommandRefused as exc:
            request.refuse(exc)
        except Exception as exc:  # a bug: the caller hears of it, the master logs it
            request.refuse(exc)
            raise

    async def _carry_out(self, request: CommandRequest, now: float) -> None:
        command = request.command
        if self._shutdown_reason is not None:
            raise CommandRefused("the master is shutting down")
        match command:
            case ReloadWorkers(why):
                self._begin_reload(why, now).when_done(request.reply)
                return
            case ShutDown(why):
                await self._begin_shutdown(why, now, reason=why)
                request.answer(why)
                return
            case AddAccount(account, source):
                self.accounts.add(account, source, now)
                request.answer(account.id)
                return
            case ChangeAccount(account):
                self.accounts.change(account, now)
                request.answer(account.id)
                return
            case RemoveAccount(account_id):
                let_go = self.accounts.remove(account_id, now)
                let_go.add_done_callback(lambda _: request.answer(account_id))
                return
            case ApplyConfig(config):
                self._reconfigure(config, now)
                request.answer(config)
                return
            case ReleaseAccount(account_id):
                if not self.accounts.release(account_id, now):
                    raise CommandRefused(f"account {account_id!r} is not quarantined")
                request.answer(account_id)
                return
            case SyncAccount(account_id, from_seq):
                try:
                    request.answer(self.accounts.request_sync(account_id, from_seq))
                except LookupError as exc:
                    raise CommandRefused(str(exc)) from None
                return
        assert isinstance(command, StartWorker | StopWorker | RestartWorker)
        slot = self.slots.get(command.worker_id)
        if slot is None:
            raise CommandRefused(f"no worker {command.worker_id!r}")
        if self._reload is not None and not self._reload.done:
            name = type(command).__name__.removesuffix("Worker").lower()
            raise CommandRefused(f"a reload is under way; {name} {slot.id} after it")
        self._log.info(
            "operator action", action=type(command).__name__, worker=slot.id, state=slot.state.value
        )
        match command:
            case StopWorker() if slot.state is WorkerState.STOPPED:
                request.answer(slot)
                return
            case StartWorker() if slot.state is WorkerState.RUNNING:
                request.answer(slot)
                return
            case StopWorker():
                self._wait_for_slot(slot, request)
                await slot.request_stop(StopReason.STOP, now, restart=False)
            case RestartWorker():
                self._wait_for_slot(slot, request)
                await slot.request_stop(StopReason.RESTART, now, restart=True)
            case StartWorker():
                self._wait_for_slot(slot, request)
                if slot.state in WAITING:
                    await slot.start(now, "started by operator")
                # starting or stopping: answered where it settles

    def _wait_for_slot(self, slot: WorkerSlot, request: CommandRequest) -> None:
        """Answer ``request`` with the slot at its next settled state."""
        self._waiting.setdefault(slot.id, []).append(request)

    def _slot_changed(self, slot: WorkerSlot, state: WorkerState, reason: str) -> None:
        self._publish(
            "worker.state",
            {"worker": slot.id, "state": state.value, "pid": slot.pid, "reason": reason},
        )
        if state not in SETTLED:
            return
        for request in self._waiting.pop(slot.id, []):
            request.answer(slot)

    async def _begin_shutdown(self, cause: str, now: float, **fields: str) -> None:
        """Stop every worker (a signal, or an operator's ``ShutDown``); the loop ends once
        they have stopped. ``fields`` go to the log line."""
        self._shutdown_reason = cause
        if self._reload is not None and not self._reload.done:
            self._reload.abandon(now)
        self._reload = None
        for requests in self._waiting.values():
            for request in requests:
                request.refuse(CommandRefused("the master is shutting down"))
        self._waiting.clear()
        self._log.info("shutting down", **fields)
        self._publish("master.stopping", {"reason": cause})
        self.accounts.master_stopping()
        for slot in self.slots.values():
            await slot.shut_down(now)

    def _begin_reload(self, why: str, now: float) -> RollingReload:
        if self._reload is not None and not self._reload.done:
            raise CommandRefused("a reload is already under way")
        self._log.info("reload of all workers", why=why)
        reload = self._reload = self.last_reload = RollingReload(
            self.slots, self.accounts, self.config.supervision, self._log, now, why
        )
        self._publish("reload.started", {"why": why})
        ended: asyncio.Future[RollingReload] = asyncio.get_running_loop().create_future()
        ended.add_done_callback(
            lambda _: self._publish("reload.ended", {"why": why, "error": reload.error})
        )
        reload.when_done(ended)
        return reload

    async def _on_signal(self, sig: signal.Signals, now: float) -> None:
        if sig is signal.SIGHUP:
            if self._shutdown_reason is not None:
                self._log.warning("SIGHUP ignored: shutting down")
                return
            if self.on_hangup is not None:  # off the loop: it sends commands back to it
                hangup = asyncio.create_task(self.on_hangup(), name="SIGHUP")
                hangup.add_done_callback(self._hangup_done)
                return
            try:
                self._begin_reload("SIGHUP", now)
            except CommandRefused as exc:
                self._log.warning("SIGHUP ignored", reason=str(exc))
            return
        if self._shutdown_reason is None:
            await self._begin_shutdown(sig.name, now, signal=sig.name)
        else:
            self._log.warning("second signal: killing all workers now", signal=sig.name)
            self._killed_workers = True
            for slot in self.slots.values():
                slot.kill_now(now)
