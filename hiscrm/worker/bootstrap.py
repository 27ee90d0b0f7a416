"""Entry points of a worker process.

``main`` is the target the master hands to ``multiprocessing`` (a fresh interpreter that
imports the code now on disk); ``forked_main`` runs in a worker forked from the warm
template (``template.py``), which imported the same code just before. Either way,
before anything else the process:

1. starts a new session, so the worker and everything it starts form one process group
   that the master can stop as a whole;
2. becomes a child subreaper, so a descendant that leaves that group (``setsid()``,
   ``setpgid()``) and loses its parent is adopted by the worker, not by the master or
   init: the worker's tree holds everything it started, and every way out kills that
   tree (see ``teardown``);
3. asks the kernel for a signal of its own when the master dies (PR_SET_PDEATHSIG with
   SIGRTMIN+1) and handles it by killing that tree and its group, so no worker outlives
   its master even with a blocked event loop. (Not SIGTERM: a SIGKILLed master with
   several threads hands its children to a surviving thread first and the signal comes
   then, while getppid() still names the master, so a SIGTERM could not be told apart
   from a graceful stop.);
4. points file descriptors 1 and 2 at ``logs/<worker>.log`` and enables faulthandler
   there, so even an import error or a segfault ends up in the file. If that file cannot
   be opened, the worker writes why to ``logs/<worker>.log.boot-error`` (which the
   master's tail of the log shows) and to its inherited stderr, and exits with
   ``LOG_FAILED``.

Only the standard library and hiscrm's standard-library-only modules (``logfile``,
``exit_codes``, ``prctl``, ``teardown``) are imported at module level.
"""

import contextlib
import faulthandler
import json
import multiprocessing
import os
import signal
import socket
import sys
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from hiscrm import lean_imports, prctl, safe_path
from hiscrm.exit_codes import ExitCode
from hiscrm.logfile import LineStream, RotatingLogFile, boot_error_path
from hiscrm.worker import teardown

MASTER_DIED = signal.SIGRTMIN + 1  # sent by the kernel, only when the master dies
REPARENT_WAIT_S = 2.0


def main(boot_json: str, conn: Connection) -> None:
    """A spawned worker."""
    started = time.monotonic()
    boot = json.loads(boot_json)
    _become_worker(int(boot["master_pid"]))
    _redirect_stdin()
    sink = _open_log(boot)
    try:
        lean_imports.import_structlog()
        from hiscrm.worker.runtime import run_worker
    except BaseException:
        print(f"worker {boot['worker_id']}: cannot import the worker runtime", file=sys.stderr)
        traceback.print_exc()
        _exit(ExitCode.BOOT_FAILED)
    try:  # inline, not in a helper: a faulthandler dump is a frame shorter
        code = run_worker(boot_json, conn, sink, started)
    except BaseException:  # a crash: its traceback goes to the log
        traceback.print_exc()
        code = ExitCode.CRASHED
    _exit(code)


def forked_main(boot_json: str, channel_fd: int, started: float, preloaded: Any) -> NoReturn:
    """A worker forked from the template (by way of a process that exits at once, so
    the worker becomes the master's child: the master is a child subreaper)."""
    prepare_forked(int(json.loads(boot_json)["master_pid"]))
    run_forked(boot_json, channel_fd, started, preloaded)


def prepare_forked(master_pid: int) -> None:
    """The part of a forked worker's start that does not depend on which worker it will
    be: a template's spare does it ahead of time, while it waits for a request."""
    deadline = time.monotonic() + REPARENT_WAIT_S
    while os.getppid() != master_pid:
        if time.monotonic() > deadline:
            os._exit(ExitCode.ORPHANED)  # the master is gone (or not our reaper)
        time.sleep(0.0002)
    _become_worker(master_pid)
    _redirect_stdin()


def run_forked(boot_json: str, channel_fd: int, started: float, preloaded: Any) -> NoReturn:
    boot = json.loads(boot_json)
    sink = _open_log(boot)
    # As a spawned worker is named; inherited from the template it would say "template".
    multiprocessing.current_process().name = f"hiscrm-{boot['worker_id']}"
    from hiscrm.worker.runtime import run_worker  # imported by the template already

    channel = socket.socket(fileno=channel_fd)
    try:
        code = run_worker(boot_json, channel, sink, started, preloaded)
    except BaseException:  # a crash: its traceback goes to the log
        traceback.print_exc()
        code = ExitCode.CRASHED
    _exit(code)


def _become_worker(master_pid: int) -> None:
    safe_path.forget()
    os.setsid()
    _install_signal_handlers()
    if sys.platform.startswith("linux"):  # elsewhere the pipe's end-of-file is the only notice
        prctl.set_child_subreaper()
        prctl.set_parent_death_signal(MASTER_DIED)
    if os.getppid() != master_pid:  # the master died before we asked to be told
        os._exit(ExitCode.ORPHANED)


def _open_log(boot: dict[str, Any]) -> RotatingLogFile:
    """The worker's log in place on fds 1 and 2; if it cannot be, exit ``LOG_FAILED``
    after saying why where the master will find it."""
    try:
        sink = capture_output(boot)
    except OSError as exc:
        _log_failed(boot, exc)
    try:  # a cause left by an earlier start is not this start's
        boot_error_path(Path(boot["log_path"])).unlink(missing_ok=True)
    except OSError as exc:
        print(f"cannot remove an old boot error file: {exc}", file=sys.stderr)
    return sink


def _log_failed(boot: dict[str, Any], exc: OSError) -> NoReturn:
    path = Path(boot["log_path"])
    text = (
        f"worker {boot['worker_id']} pid {os.getpid()}: cannot open its log file {path}: "
        f"{type(exc).__name__}: {exc}\n"
    )
    try:  # the traceback first: a short tail ends with the sentence that says it all
        boot_error_path(path).write_text(traceback.format_exc() + text)
    except OSError as second:  # the logs directory itself is unusable: stderr must do
        text += f"(cannot write {boot_error_path(path)} either: {second})\n"
    with contextlib.suppress(OSError):  # no stderr either: the exit code still says it
        os.write(2, text.encode("utf-8", "backslashreplace"))
    _exit(ExitCode.LOG_FAILED)


def capture_output(boot: dict[str, Any]) -> RotatingLogFile:
    sink = RotatingLogFile(
        Path(boot["log_path"]), int(boot["log_max_bytes"]), int(boot["log_backups"]), (1, 2)
    )
    sink.open()
    sys.stdout = LineStream(sink, 1)
    sys.stderr = LineStream(sink, 2)
    faulthandler.enable(file=sys.stderr, all_threads=True)
    os.environ["NO_COLOR"] = "1"
    os.environ.pop("FORCE_COLOR", None)
    return sink


def _exit(code: int) -> NoReturn:
    # Exit now: the goodbye is sent and every log line written. A normal interpreter exit
    # would wait for threads a platform left running, or tasks that ignore cancellation.
    # Whatever the platforms started and did not stop goes too, escaped or not.
    _kill_leftovers()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def _kill_leftovers() -> None:
    killed = teardown.kill_descendants()
    if killed:
        note = f"worker pid {os.getpid()}: exiting; killed {len(killed)} processes it left: "
        os.write(2, (note + " ".join(map(str, killed[:20])) + "\n").encode())


def _install_signal_handlers() -> None:
    # Plain handlers, not loop.add_signal_handler: the parent-death one must run even
    # while the event loop is blocked, which is exactly when it matters most.
    def on_master_died(signum: int, frame: FrameType | None) -> None:
        teardown.kill_own_group("the master has died (parent-death signal)")

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        if not teardown.request_graceful_stop():
            # Still booting, or already on the way out: nothing to wind down.
            teardown.kill_descendants()
            os._exit(ExitCode.OK)

    signal.signal(MASTER_DIED, on_master_died)
    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the master's to handle


def _redirect_stdin() -> None:
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
