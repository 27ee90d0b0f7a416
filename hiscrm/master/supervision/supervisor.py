"""The master's one loop: it owns every worker handle and is the only code that changes them.

Pipes, process exits, signals and the store thread post events to one queue (see
``events``); the loop takes them one at a time and otherwise sleeps until the nearest
deadline (a heartbeat expiring, a backoff ending, a stop escalating, an account going
stale or due to move). There is no polling.
"""

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psutil
from structlog.typing import FilteringBoundLogger

from hiscrm import __version__
from hiscrm.config import Config
from hiscrm.items import epoch_ms
from hiscrm.master.api.metrics import MasterMetrics
from hiscrm.master.data.account_manager import AccountManager
from hiscrm.master.data.store_thread import StoreThread, SyncOutcome
from hiscrm.master.supervision.code_status import CodeStatus
from hiscrm.master.supervision.events import (
    ChannelClosed,
    Command,
    Event,
    FrameReceived,
    ProcessExited,
    SignalReceived,
    StoreOutcomes,
)
from hiscrm.master.supervision.launcher import Launcher
from hiscrm.master.supervision.rolling_reload import RollingReload
from hiscrm.master.supervision.worker_handle import WorkerHandle, WorkerState
from hiscrm.protocol import (
    ProtocolError,
    WorkerAccountReleased,
    WorkerAccountState,
    WorkerDataSync,
    WorkerError,
    WorkerGoodbye,
    WorkerHeartbeat,
    WorkerRegister,
    decode,
)

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
SETTLED = (WorkerState.RUNNING, WorkerState.BOOT_FAILED, WorkerState.BACKOFF, WorkerState.STOPPED)
ORPHAN_SCAN_DELAY_S = 0.1  # SIGCHLD -> reaping adopted orphans


class CommandRefused(Exception):
    """An operator's action that cannot be carried out now (the reason says why)."""


class Supervisor:
    def __init__(
        self,
        config: Config,
        launcher: Launcher,
        log: FilteringBoundLogger,
        metrics: MasterMetrics | None = None,
    ) -> None:
        self.config = config
        self._log = log
        self._metrics = metrics
        self.started_at_ms = epoch_ms()
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._launcher = launcher
        self.handles: dict[str, WorkerHandle] = {
            worker_id: WorkerHandle(worker_id, config, launcher, self._events.put_nowait, log)
            for worker_id in config.worker_ids
        }
        # Processes of a slot beside its current one, during a reload: the replacement
        # until it takes over, then the old one until it has stopped.
        self.others: list[WorkerHandle] = []
        self.store = StoreThread(
            config.state_dir / "hiscrm.db", self._from_store_thread, config.retention.days(), log
        )
        self.accounts: AccountManager | None = None  # made in run(), on the loop
        self.code = CodeStatus(config.code.packages)
        self.protocol_errors_total = 0
        self.internal_errors_total = 0
        self.orphans_reaped = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._shutdown_reason: str | None = None
        self._rollout: RollingReload | None = None
        self._orphan_scan: asyncio.TimerHandle | None = None
        self.last_reload: RollingReload | None = None
        self._waiters: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []

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

    async def command(
        self, action: str, worker_id: str | None = None, why: str = "requested"
    ) -> Any:
        """Carry out an operator's action in the loop; returns once it has settled: the
        WorkerHandle for stop/start/restart, the RollingReload for reload."""
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.post(Command(action, worker_id, reply, why))
        return await reply

    def _from_store_thread(self, outcomes: list[SyncOutcome]) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self.post, StoreOutcomes(outcomes))

    # --- the loop ------------------------------------------------------------------------

    def count_internal_error(self) -> int:
        self.internal_errors_total += 1
        return self.internal_errors_total

    async def run(
        self,
        on_ready: Callable[[], Awaitable[None]] | None = None,
        on_stopped: Callable[[], Awaitable[None]] | None = None,
    ) -> int:
        """Run until shut down. ``on_ready`` runs once the store is open, before workers
        start; ``on_stopped`` once every worker has stopped."""
        loop = self._loop = asyncio.get_running_loop()
        loop.set_exception_handler(self._on_loop_exception)
        self._log.info(
            "master starting",
            pid=os.getpid(),
            version=__version__,
            state_dir=str(self.config.state_dir),
            workers=len(self.handles),
            accounts=len(self.config.accounts),
        )
        self.store.start()  # opens and migrates the store; raises before any worker starts
        self.accounts = AccountManager(
            self.config,
            self.store,
            self.handles,
            self._log,
            loop.time(),
            self._metrics.commit_latency.observe if self._metrics else lambda seconds: None,
            self._current,
            self.count_internal_error,
        )
        for sig in HANDLED_SIGNALS:
            loop.add_signal_handler(sig, self.post, SignalReceived(sig))
        loop.add_signal_handler(signal.SIGCHLD, self._schedule_orphan_reaping)
        try:
            if on_ready is not None:
                await on_ready()
            if self.handles:
                sample = next(iter(self.handles.values())).boot()
                await self._launcher.prepare(sample, self.count_internal_error)
            for handle in self.handles.values():
                await handle.start(loop.time(), "master started")
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
            self.store.stop()
        self._log.info("master stopped", reason=self._shutdown_reason)
        return 0

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
        known = {h.pid for h in self.all_handles() if h.pid is not None}
        known |= self._launcher.known_pids()
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

    def all_handles(self) -> list[WorkerHandle]:
        return [*self.handles.values(), *self.others]

    def _finished(self) -> bool:
        return self._shutdown_reason is not None and all(
            h.state is WorkerState.STOPPED for h in self.all_handles()
        )

    def _deadlines(self) -> list[float]:
        deadlines = [h.deadline for h in self.all_handles() if h.deadline is not None]
        if self.accounts is not None and (due := self.accounts.next_deadline()) is not None:
            deadlines.append(due)
        if self._rollout is not None and (due := self._rollout.deadline) is not None:
            deadlines.append(due)
        return deadlines

    async def _next_event(self) -> Event | None:
        if not self._events.empty():
            return self._events.get_nowait()
        deadlines = self._deadlines()
        if not deadlines:
            return await self._events.get()
        try:
            async with asyncio.timeout_at(min(deadlines)):
                return await self._events.get()
        except TimeoutError:
            return None

    async def _step(self, event: Event | None) -> None:
        """Handle one event, then whatever deadlines are due. A bug here is logged and
        counted; it never takes the master down."""
        loop = asyncio.get_running_loop()
        try:
            if event is not None:
                await self._handle(event, loop.time())
            now = loop.time()
            for handle in self.all_handles():
                if handle.deadline is not None and handle.deadline <= now:
                    await handle.on_deadline(now)
            due = self.accounts.next_deadline() if self.accounts is not None else None
            if self.accounts is not None and due is not None and due <= now:
                self.accounts.on_deadline(now)
            if self._rollout is not None and not self._rollout.done:
                await self._rollout.advance(loop.time())
            self.others = [h for h in self.others if h.state is not WorkerState.STOPPED]
            self._answer_waiters()
        except Exception as exc:
            self._log.error(
                "master error while handling an event",
                during=repr(event)[:200],
                internal_errors_total=self.count_internal_error(),
                exc_info=exc,
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

    def _current(self, worker_id: str, pid: int) -> WorkerHandle | None:
        """The handle whose process sent the event; None for a stale one (a process that
        has since been replaced)."""
        for handle in self.all_handles():
            if handle.id == worker_id and handle.pid == pid:
                return handle
        return None

    def accounts_manager(self) -> AccountManager:
        assert self.accounts is not None
        return self.accounts

    # --- reload --------------------------------------------------------------------------

    def new_replacement(self, worker_id: str) -> WorkerHandle:
        """A second process for a slot, for a reload; not restarted if it fails."""
        handle = WorkerHandle(
            worker_id,
            self.config,
            self._launcher,
            self._events.put_nowait,
            self._log,
            restartable=False,
        )
        self.others.append(handle)
        return handle

    def promote(self, old: WorkerHandle, new: WorkerHandle) -> None:
        """``new`` becomes the slot's process; ``old`` stays aside until it has stopped."""
        new.take_over_from(old)
        self.handles[new.id] = new
        self.others.remove(new)
        self.others.append(old)
        self._log.info(
            "worker replaced by its new process", worker=new.id, old_pid=old.pid, new_pid=new.pid
        )

    async def _handle(self, event: Event, now: float) -> None:
        match event:
            case FrameReceived(worker_id, pid, data):
                if (handle := self._current(worker_id, pid)) is not None:
                    await self._on_frame(handle, data, now)
            case ProcessExited(worker_id, pid):
                if (handle := self._current(worker_id, pid)) is not None:
                    await self._on_exit(handle, now)
            case ChannelClosed(worker_id, pid, error):
                # A clean end of stream means the worker is exiting; its exit follows.
                # A broken frame means the stream cannot be trusted: replace the worker.
                handle = self._current(worker_id, pid)
                if handle is not None and error is not None:
                    self._protocol_error(handle, "framing", str(error), b"")
                    restart = self._shutdown_reason is None
                    await handle.request_stop("protocol_error", now, restart=restart)
            case StoreOutcomes(outcomes):
                self.accounts_manager().on_outcomes(outcomes, now)
            case Command():
                try:
                    await self._on_command(event, now)
                except Exception as exc:  # CommandRefused, or a bug: the caller hears of it
                    if not event.reply.done():
                        event.reply.set_exception(exc)
                    if not isinstance(exc, CommandRefused):
                        raise
            case SignalReceived(signum):
                await self._on_signal(signal.Signals(signum), now)

    async def _on_command(self, command: Command, now: float) -> None:
        if self._shutdown_reason is not None:
            raise CommandRefused("the master is shutting down")
        if command.action == "reload":
            rollout = self._begin_reload(command.why, now)
            self._wait(command.reply, lambda: rollout if rollout.done else None)
            return
        assert command.worker_id is not None
        if self._rollout is not None and not self._rollout.done:
            raise CommandRefused(
                f"a reload is under way; {command.action} {command.worker_id} after it"
            )
        handle = self.handles[command.worker_id]
        before = handle.starts
        waiting = (WorkerState.STOPPED, WorkerState.BACKOFF, WorkerState.BOOT_FAILED)
        self._log.info(
            "operator action", action=command.action, worker=handle.id, state=handle.state.value
        )
        match command.action:
            case "stop":
                await handle.request_stop("stop", now, restart=False)
                self._wait(
                    command.reply, lambda: handle if handle.state is WorkerState.STOPPED else None
                )
                return
            case "start" if handle.state is WorkerState.RUNNING:
                if not command.reply.done():  # the caller may have given up already
                    command.reply.set_result(handle)
                return
            case "start" | "restart" if handle.state in waiting:
                await handle.start(now, f"{command.action}ed by operator")
            case "restart":
                await handle.request_stop("restart", now, restart=True)
            case "start":  # starting or stopping: see where it settles
                pass
            case _:
                raise CommandRefused(f"unknown action {command.action!r}")

        def settled() -> WorkerHandle | None:
            return handle if handle.starts > before and handle.state in SETTLED else None

        self._wait(command.reply, settled)

    def _wait(self, reply: "asyncio.Future[Any]", result: Callable[[], Any]) -> None:
        self._waiters.append((result, reply))

    def _answer_waiters(self) -> None:
        still: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        for result, reply in self._waiters:
            if reply.done():  # the caller gave up
                continue
            value = result()
            if value is None:
                still.append((result, reply))
            else:
                reply.set_result(value)
        self._waiters = still

    async def _on_exit(self, handle: WorkerHandle, now: float) -> None:
        was_registered = handle.registered is not None
        current = self.handles.get(handle.id) is handle
        await handle.on_exit(now)
        if not current:  # a reload's old or new process: the slot itself is not down
            self.accounts_manager().retired_process_exited(handle, now)
        elif was_registered:
            self.accounts_manager().worker_down(handle.id, now)

    async def _on_frame(self, handle: WorkerHandle, data: bytes, now: float) -> None:
        try:
            message = decode(data).body
        except ProtocolError as exc:
            self._protocol_error(handle, exc.kind, exc.detail, exc.head)
            return
        match message:
            case WorkerHeartbeat():
                handle.on_heartbeat(message, now)
            case WorkerDataSync():
                self.accounts_manager().on_sync(handle, message)
            case WorkerAccountReleased():
                self.accounts_manager().on_released(handle, message, now)
            case WorkerRegister() if handle.state is WorkerState.STOPPING:
                self._log.info("registration ignored: worker is being stopped", worker=handle.id)
            case WorkerRegister():
                if handle.state is not WorkerState.STARTING or message.worker_id != handle.id:
                    detail = (
                        f"unexpected registration as {message.worker_id!r} in state {handle.state}"
                    )
                    self._protocol_error(handle, "invalid", detail, data[:80])
                    return
                # A reload's new process gets its accounts by handover, not as the slot's.
                if handle.on_register(message, now) and self.handles.get(handle.id) is handle:
                    self.accounts_manager().worker_up(handle, now)
            case WorkerError():
                handle.worker_errors += 1
                self._log.error(
                    "worker error",
                    worker=handle.id,
                    pid=handle.pid,
                    source=message.source,
                    account_id=message.account_id,
                    error=f"{message.error_type}: {message.message}",
                    worker_errors_total=handle.worker_errors,
                    traceback=message.traceback,
                )
            case WorkerAccountState():  # the worker logged it; kept for status
                self.accounts_manager().on_account_state(
                    handle, message.account_id, message.state, now
                )
            case WorkerGoodbye():
                self._log.info(
                    "worker says goodbye", worker=handle.id, pid=handle.pid, reason=message.reason
                )
            case _:
                detail = f"{message.type} is not for the master"
                self._protocol_error(handle, "invalid", detail, data[:80])

    def _protocol_error(self, handle: WorkerHandle, kind: str, detail: str, head: bytes) -> None:
        handle.protocol_errors[kind] = handle.protocol_errors.get(kind, 0) + 1
        self.protocol_errors_total += 1
        self._log.error(
            "protocol error",
            worker=handle.id,
            pid=handle.pid,
            kind=kind,
            detail=detail,
            first_bytes=repr(head),
            protocol_errors_total=self.protocol_errors_total,
        )

    def _begin_reload(self, why: str, now: float) -> RollingReload:
        if self._rollout is not None and not self._rollout.done:
            raise CommandRefused("a reload is already under way")
        self._log.info("reload of all workers", why=why)
        self._rollout = self.last_reload = RollingReload(self, self._log, now, why)
        return self._rollout

    async def _on_signal(self, sig: signal.Signals, now: float) -> None:
        if sig is signal.SIGHUP:
            if self._shutdown_reason is not None:
                self._log.warning("SIGHUP ignored: shutting down")
                return
            try:
                self._begin_reload("SIGHUP", now)
            except CommandRefused as exc:
                self._log.warning("SIGHUP ignored", reason=str(exc))
            return
        if self._shutdown_reason is None:
            self._shutdown_reason = sig.name
            if self._rollout is not None and not self._rollout.done:
                self._rollout.abandon(now)
            self._rollout = None
            for _, reply in self._waiters:
                if not reply.done():
                    reply.set_exception(CommandRefused("the master is shutting down"))
            self._waiters.clear()
            self._log.info("shutting down", signal=sig.name)
            for handle in self.all_handles():
                await handle.request_stop("shutdown", now, restart=False)
        else:
            self._log.warning("second signal: killing all workers now", signal=sig.name)
            for handle in self.all_handles():
                handle.kill_now("shutdown", now)
