"""The worker's event loop: registration, heartbeats, messages from the master, and the
way out. The accounts themselves live in ``account_host``.

Lifecycle of a worker process::

    booting --register--> waiting for welcome --welcome--> serving --stop--> stopping --> exit

It stops for one of five reasons, each with its exit code: ``master:shutdown`` or SIGTERM
(graceful, 0: platforms stopped, pending changes flushed and acknowledged), the master
refused it or speaks another protocol (76), the pipe to the master closed, meaning the
master is gone (75; the worker then kills its own process group so that nothing it
started survives; unacknowledged changes wait in the spool), or one of its vital tasks
(sync, heartbeats) ended (70: a worker that cannot sync must not look alive; platforms
are stopped, changes are not flushed but wait in the spool, and the master restarts it).
"""

import asyncio
import os
import socket
import sys
import threading
import time
from collections.abc import Coroutine
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import msgspec
from pydantic_core import PydanticSerializationError
from structlog.typing import FilteringBoundLogger

from hiscrm.beat import on_the_beat
from hiscrm.channel import Channel, open_channel
from hiscrm.code_fingerprint import CodeFile, files_at, loaded_files, source_version
from hiscrm.exit_codes import ExitCode
from hiscrm.log_config import configure_worker_logging, get_logger
from hiscrm.logfile import RotatingLogFile
from hiscrm.process_title import WorkerTitle
from hiscrm.protocol import (
    PROTOCOL_VERSION,
    AnyMessage,
    Encoder,
    MasterAccountAssign,
    MasterAccountDigest,
    MasterAccountRevoke,
    MasterDataAck,
    MasterDataNack,
    MasterRefuse,
    MasterSend,
    MasterShutdown,
    MasterSyncRequest,
    MasterWelcome,
    ProtocolError,
    ProtocolErrorKind,
    WorkerBoot,
    WorkerGoodbye,
    WorkerHeartbeat,
    WorkerRegister,
    decode,
    schema_hash,
)
from hiscrm.worker import teardown
from hiscrm.worker.account_host import AccountHost
from hiscrm.worker.adopted import AdoptedZombies
from hiscrm.worker.error_reporter import ErrorReporter
from hiscrm.worker.exception_text import unicode_safe_data
from hiscrm.worker.platform_set import PlatformSet, add_plugin_paths, load_platforms
from hiscrm.worker.sync import Syncer

ORPHAN_STOP_S = 0.5  # how long account tasks get when the master is already gone


class Preloaded(msgspec.Struct, frozen=True):
    """What the fork template imported and measured before forking this worker."""

    platforms: PlatformSet  # what it loaded, and what it could not
    code_files: list[CodeFile]
    code_version: str
    loop: asyncio.AbstractEventLoop | None = None  # made by a spare ahead of time


def rehearse(sample_boot_json: str, preloaded: Preloaded) -> asyncio.AbstractEventLoop:
    """In a template's spare, before it knows which worker it will be: go through the
    motions of a start once (validate a boot, log a line, encode a registration, run the
    loop), so the memory a start touches is copied from the template now, not while a
    worker is waited for. Nothing leaves the process. Returns the event loop to use."""
    boot = WorkerBoot.model_validate_json(sample_boot_json)
    sink = RotatingLogFile(Path(os.devnull), 1 << 62, 0)
    sink.open()
    configure_worker_logging(sink)
    get_logger().info("rehearsal", worker=boot.worker_id)
    encoder = Encoder()
    encoder.encode(
        registration(boot, preloaded.platforms, preloaded.code_files, preloaded.code_version, 0.0)
    )
    decode(
        encoder.encode(
            MasterWelcome(protocol=PROTOCOL_VERSION, schema_hash=schema_hash(), master_pid=0)
        )
    )
    loop = asyncio.new_event_loop()
    loop.run_until_complete(asyncio.sleep(0))
    sink.close()
    return loop


def registration(
    boot: WorkerBoot,
    platforms: PlatformSet,
    files: list[CodeFile],
    version: str,
    boot_ms: float,
) -> WorkerRegister:
    """The worker's first message: who it is, what it speaks, what code it runs."""
    return WorkerRegister(
        worker_id=boot.worker_id,
        pid=os.getpid(),
        protocol=PROTOCOL_VERSION,
        schema_hash=schema_hash(),
        platforms=sorted(platforms.classes),
        boot_ms=boot_ms,
        code_version=version,
        code_files=files,
        platform_errors=platforms.errors(),
        idempotent_platforms=platforms.idempotent(),
    )


def code_fingerprint(boot: WorkerBoot, platforms: PlatformSet) -> tuple[list[CodeFile], str]:
    """The files this process runs (and those its failed imports went through, so that a
    fix makes it stale), and the version of the code."""
    files = {f.path: f for f in loaded_files(boot.code_packages)}
    for file in files_at(platforms.failure_files()):
        files.setdefault(file.path, file)
    version = source_version(boot.platforms, boot.code_packages)
    return sorted(files.values(), key=lambda f: f.path), version


def run_worker(
    boot_json: str,
    conn: Connection | socket.socket,
    sink: RotatingLogFile,
    started: float,
    preloaded: Preloaded | None = None,
) -> int:
    """Called by ``bootstrap`` once the log file is in place. Returns the exit code."""
    boot = WorkerBoot.model_validate_json(boot_json)
    configure_worker_logging(sink)
    log = get_logger()
    log.info(
        "worker starting",
        worker=boot.worker_id,
        pid=os.getpid(),
        python=sys.version.split()[0],
        forked=preloaded is not None,
    )
    add_plugin_paths(boot.plugin_paths)
    # A platform that cannot load fails its accounts only (reported once serving).
    platforms = load_platforms(boot.platforms, preloaded.platforms if preloaded else None)
    runtime = WorkerRuntime(boot, platforms, sink, log, started, preloaded)
    # No asyncio.run: its teardown would wait for tasks that ignore cancellation. The
    # process ends with os._exit once serve() has said goodbye (see bootstrap).
    loop = preloaded.loop if preloaded and preloaded.loop else asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    serving = loop.create_task(runtime.serve(conn), name="serve")
    while True:
        try:
            return loop.run_until_complete(serving)
        except (SystemExit, KeyboardInterrupt) as exc:
            # asyncio lets these two out of any task or callback, stopping the loop: one
            # that a platform's own task raised is reported, and the worker goes on.
            if serving.done():
                raise
            runtime.errors.report("loop", exc)


class WorkerRuntime:
    def __init__(
        self,
        boot: WorkerBoot,
        platforms: PlatformSet,
        sink: RotatingLogFile,
        log: FilteringBoundLogger,
        started: float,
        preloaded: Preloaded | None = None,
    ) -> None:
        self.boot = boot
        self._preloaded = preloaded  # a forked worker has its template's fingerprint
        self._platforms = platforms
        self._sink = sink
        self._log = log
        self._started = started
        self._encoder = Encoder()
        self.channel: Channel | None = None
        self.errors = ErrorReporter(self.send, log)
        self.accounts: AccountHost | None = None
        self._welcomed = False
        self._stop: asyncio.Future[tuple[ExitCode, str]] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._rotate_errors_seen = sink.rotate_errors
        self._rotation_reported = False
        self._adopted = AdoptedZombies()
        self._title = WorkerTitle(boot.worker_id)

    # --- sending -------------------------------------------------------------------------

    def send(self, message: AnyMessage) -> bool:
        try:
            frame = self._encoder.encode(message)
        except PydanticSerializationError as exc:  # text a platform made that is not Unicode
            self.errors.report(f"encoding {message.type} (sent with its text escaped)", exc)
            safe = unicode_safe_data(message.model_dump())
            frame = self._encoder.encode(type(message).model_validate(safe))
        return self.send_frame(frame)

    def send_frame(self, frame: bytes) -> bool:
        if self.channel is None or not self.channel.is_open:
            return False
        return self.channel.send(frame)

    # --- the main coroutine --------------------------------------------------------------

    async def serve(self, conn: Connection | socket.socket) -> int:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(self._on_loop_exception)
        threading.excepthook = self._on_thread_exception
        self._stop = loop.create_future()
        self._title.show()
        channel = self.channel = await open_channel(conn, self._on_frame, self._on_channel_closed)
        syncer = Syncer(
            self.send_frame,
            lambda: channel.write_buffer_size,
            self._encoder,
            ack_timeout_s=self.boot.ack_timeout_s,
            idle_sync_s=self.boot.idle_sync_s,
            log=self._log,
        )
        self.accounts = AccountHost(
            self.boot, self._platforms, self.errors, self.send, syncer, self.spawn, self._log
        )

        def graceful_stop() -> None:  # runs in the SIGTERM handler
            loop.call_soon_threadsafe(self.request_stop, ExitCode.OK, "SIGTERM")

        teardown.set_graceful_stop(graceful_stop)
        if self._preloaded is not None and not self._platforms.imported_here:
            files, version = self._preloaded.code_files, self._preloaded.code_version
        else:  # spawned, or it imported what its template could not
            files, version = code_fingerprint(self.boot, self._platforms)
        boot_ms = (time.monotonic() - self._started) * 1000
        self.send(registration(self.boot, self._platforms, files, version, boot_ms))
        for spec, failed in sorted(self._platforms.failures.items()):
            self.errors.report(f"loading platform {spec}", failed.error)
        self.spawn(self._heartbeats(), "heartbeat", vital=True)
        self.spawn(syncer.run(), "sync", vital=True)
        code, reason = await self._stop
        teardown.set_graceful_stop(None)
        if code is ExitCode.ORPHANED:
            await self.accounts.stop_all(reason, ORPHAN_STOP_S, flush=False)
            teardown.kill_own_group(reason)
        # A failed sync task cannot flush: what is pending waits in the spool.
        flush = code is not ExitCode.TASK_FAILED
        left = await self.accounts.stop_all(reason, self._stop_timeout(), flush=flush)
        if left:
            self._log.warning("changes not acknowledged at exit stay in the spool", unacked=left)
        self._log.info("worker stopping", reason=reason, exit_code=int(code))
        self.send(WorkerGoodbye(reason=reason))
        if channel.is_open:
            try:
                async with asyncio.timeout(1.0):
                    await channel.flushed()
            except TimeoutError:
                self._log.error("goodbye not delivered: the master is not reading")
            channel.close()
        return int(code)

    def request_stop(self, code: ExitCode, reason: str) -> None:
        if self._stop is not None and not self._stop.done():
            self._stop.set_result((code, reason))

    def _stop_timeout(self) -> float:
        # Leave the master a margin before it escalates to SIGTERM.
        return max(0.1, self.boot.stop_timeout_s * 0.8)

    # --- tasks and errors ----------------------------------------------------------------

    def spawn(
        self, coro: Coroutine[Any, Any, Any], source: str, *, vital: bool = False
    ) -> asyncio.Task[Any]:
        """Start a task whose failure is reported, never lost. A ``vital`` task (sync,
        heartbeats) that ends, by an exception or not, ends the worker (exit code 70): a
        worker that has stopped syncing must not go on looking alive."""
        task = asyncio.create_task(coro, name=source)
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._task_done(t, source, vital))
        return task

    def _task_done(self, task: asyncio.Task[Any], source: str, vital: bool) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.errors.report(source, exc)
        if vital:
            self._log.error(
                "worker cannot go on without its task; exiting to be restarted",
                task=source,
                failed=exc is not None,
            )
            self.request_stop(ExitCode.TASK_FAILED, f"its {source} task ended")

    def _on_loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if not isinstance(exc, BaseException):
            exc = RuntimeError(str(context.get("message", "unknown event loop error")))
        self.errors.report("loop", exc)

    def _on_thread_exception(self, args: threading.ExceptHookArgs) -> None:
        exc = args.exc_value or RuntimeError(f"thread {args.thread} failed")
        name = args.thread.name if args.thread is not None else "?"
        loop = self._stop.get_loop() if self._stop is not None else None
        if loop is not None and not loop.is_closed() and loop.is_running():
            loop.call_soon_threadsafe(self.errors.report, f"thread:{name}", exc)
        else:  # the loop is gone: at least the log gets it
            threading.__excepthook__(args)

    # --- heartbeats ----------------------------------------------------------------------

    async def _heartbeats(self) -> None:
        """Every ``heartbeat_interval_s``, on the beat every worker of the host keeps (see
        ``beat``): the master reads the workers' heartbeats in a few wake-ups."""
        loop = asyncio.get_running_loop()
        interval = self.boot.heartbeat_interval_s
        seq = 0
        due = on_the_beat(loop.time(), interval)
        while True:
            due += interval
            await asyncio.sleep(max(0.0, due - loop.time()))
            lag = loop.time() - due
            if lag > interval:  # the loop was blocked; do not send a burst to catch up
                due = on_the_beat(loop.time(), interval)
            seq += 1
            self.send(
                WorkerHeartbeat(
                    seq=seq,
                    loop_lag_ms=round(lag * 1000, 3),
                    errors_total=self.errors.total,
                    log_write_errors=self._sink.write_errors,
                    sync=self.accounts.syncer.counters() if self.accounts else {},
                    progress_at=self.accounts.progress() if self.accounts else {},
                )
            )
            self._check_log_file()
            self._reap_adopted()

    def _check_log_file(self) -> None:
        """Rotate for output written to fds 1 and 2 directly, and report a failing
        rotation once per run of failures (the file stays in use; every line retries)."""
        sink = self._sink
        try:
            sink.maybe_rotate()
        except OSError as exc:
            self.errors.report("logfile", exc)
        new_failures = sink.rotate_errors > self._rotate_errors_seen
        self._rotate_errors_seen = sink.rotate_errors
        if new_failures and not self._rotation_reported and sink.last_rotate_error is not None:
            self.errors.report("logfile rotation", sink.last_rotate_error)
            self._rotation_reported = True
        if not sink.rotation_failing:
            self._rotation_reported = False

    def _reap_adopted(self) -> None:
        try:
            reaped = self._adopted.reap()
        except OSError as exc:
            self.errors.report("reaping adopted processes", exc)
            return
        if reaped:
            self._log.info(
                "reaped adopted processes", pids=reaped, adopted_reaped=self._adopted.reaped
            )

    # --- receiving -----------------------------------------------------------------------

    def _on_channel_closed(self, error: Exception | None) -> None:
        if self._stop is not None and self._stop.done():
            return
        detail = f": {error}" if error else ""
        self._log.error("pipe to the master closed; the master is gone" + detail)
        self.request_stop(ExitCode.ORPHANED, "master gone (pipe closed)")

    def _on_frame(self, data: bytes) -> None:
        try:
            envelope = decode(data)
        except ProtocolError as exc:
            self.errors.report("protocol", exc)
            if exc.kind is ProtocolErrorKind.VERSION and not self._welcomed:
                self.request_stop(ExitCode.PROTOCOL_MISMATCH, str(exc))
            return
        try:
            self._dispatch(envelope.body)
        except Exception as exc:
            self.errors.report(f"handling {envelope.body.type}", exc)

    def _dispatch(self, message: AnyMessage) -> None:
        accounts = self.accounts
        assert accounts is not None
        now = asyncio.get_running_loop().time()
        match message:
            case MasterDataAck(account_id=account_id, seq=seq):
                accounts.syncer.on_ack(account_id, seq, now)
            case MasterDataNack(account_id=account_id, seq=seq, reason=reason):
                accounts.syncer.on_nack(account_id, seq, reason)
            case MasterAccountAssign():
                accounts.assign(message)
                self._title.add(message.account.id)
            case MasterAccountDigest():
                accounts.digest(message)
            case MasterAccountRevoke(account_id=account_id):
                accounts.revoke(account_id, self._stop_timeout())
                self._title.remove(account_id)
            case MasterSend():
                accounts.send(message)
            case MasterSyncRequest(account_id=account_id, from_seq=None):
                accounts.syncer.flush(account_id, now)
            case MasterSyncRequest(account_id=account_id, from_seq=int(from_seq)):
                sent = accounts.syncer.resend_from(account_id, from_seq, now)
                self._log.info(
                    "sync requested", account_id=account_id, from_seq=from_seq, items=sent
                )
            case MasterWelcome():
                self._on_welcome(message)
            case MasterRefuse(reason=reason):
                self._log.error("the master refused this worker", reason=reason)
                self.request_stop(ExitCode.PROTOCOL_MISMATCH, f"refused: {reason}")
            case MasterShutdown(reason=reason):
                self.request_stop(ExitCode.OK, f"master:shutdown ({reason})")
            case _:
                detail = f"{message.type} is not for workers"
                raise ProtocolError(ProtocolErrorKind.INVALID, detail, b"")

    def _on_welcome(self, welcome: MasterWelcome) -> None:
        mine = schema_hash()
        if welcome.protocol != PROTOCOL_VERSION or welcome.schema_hash != mine:
            self._log.error(
                "the master speaks a different protocol",
                master_protocol=welcome.protocol,
                master_schema=welcome.schema_hash,
                worker_protocol=PROTOCOL_VERSION,
                worker_schema=mine,
            )
            self.request_stop(ExitCode.PROTOCOL_MISMATCH, "protocol mismatch")
            return
        self._welcomed = True
        self._log.info("registered", master_pid=welcome.master_pid, schema=mine)
