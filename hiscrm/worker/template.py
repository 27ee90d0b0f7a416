"""The warm template: a process that has imported the worker runtime and every platform,
and forks workers from that state on request, in milliseconds instead of the few hundred
a fresh interpreter takes.

It is spawned by the master (so it loads the code on disk now) and reports its code
fingerprint; the master checks that against the disk before every fork and starts a new
template when the code has changed, so a fork never runs stale code. It holds no account
state and no event loop, threads or open files a worker would inherit.

Each worker is forked twice (template → short-lived middle process → worker) so that,
when the middle process exits, the worker becomes a child of the master, which is a
child subreaper: the master reaps it, gets its exit status, and the worker's
parent-death signal refers to the master. A template can therefore be replaced at any
time without touching the workers it forked.

Messages on the control socket (SOCK_SEQPACKET, one JSON object per message):
master → template ``{"type": "fork", "boot": ...}`` with the worker's channel socket
attached (SCM_RIGHTS), ``{"type": "exit"}``; template → master ``ready`` (pid, code
version, files), ``failed`` (error, traceback), ``forked`` (pid).
"""

import gc
import json
import os
import signal
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from hiscrm import prctl
from hiscrm.exit_codes import ExitCode
from hiscrm.logfile import LineStream, RotatingLogFile

MAX_MESSAGE = 1 << 20


def main(boot_json: str, control: socket.socket) -> None:
    boot = json.loads(boot_json)
    os.setsid()
    if sys.platform.startswith("linux"):
        prctl.set_parent_death_signal(signal.SIGKILL)  # it holds nothing worth saving
    sink = RotatingLogFile(
        Path(boot["log_path"]), int(boot["log_max_bytes"]), int(boot["log_backups"]), (1, 2)
    )
    sink.open()
    sys.stdout = LineStream(sink, 1)
    sys.stderr = LineStream(sink, 2)
    try:
        from hiscrm.code_fingerprint import code_version, loaded_files
        from hiscrm.protocol import schema_hash
        from hiscrm.worker.runtime import Preloaded, load_platforms

        platforms = load_platforms(boot["platforms"])
        schema_hash()  # computed once here, not in every worker
        files = loaded_files(boot["code_packages"])
    except BaseException as exc:
        text = traceback.format_exc()
        print(f"template: cannot load the worker code\n{text}", file=sys.stderr)
        _send(
            control, {"type": "failed", "error": f"{type(exc).__name__}: {exc}", "traceback": text}
        )
        os._exit(ExitCode.BOOT_FAILED)
    preloaded = Preloaded(platforms, files)
    gc.collect()
    gc.freeze()  # what is here now is shared with every fork; keep the collector off it
    version = code_version(files)
    print(f"template pid {os.getpid()} ready, code {version}", file=sys.stderr)
    _send(
        control,
        {
            "type": "ready",
            "pid": os.getpid(),
            "code_version": version,
            "code_files": [f.model_dump() for f in files],
        },
    )
    _serve(control, preloaded)


def _send(control: socket.socket, message: dict[str, Any]) -> None:
    control.send(json.dumps(message).encode())


def _serve(control: socket.socket, preloaded: Any) -> None:
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(control, MAX_MESSAGE, 4)
        except ConnectionError:
            data, fds = b"", []
        if not data:  # the master is gone
            os._exit(ExitCode.ORPHANED)
        request = json.loads(data)
        if request["type"] == "exit":
            os._exit(ExitCode.OK)
        if request["type"] == "fork" and len(fds) == 1:
            pid = _fork_worker(request["boot"], fds[0], control, preloaded)
            os.close(fds[0])
            _send(control, {"type": "forked", "pid": pid, "request": request.get("request")})
            continue
        for fd in fds:
            os.close(fd)
        print(f"template: unknown request {request!r:.200}", file=sys.stderr)


def _fork_worker(boot_json: str, channel_fd: int, control: socket.socket, preloaded: Any) -> int:
    """Fork a worker by way of a middle process; the worker's pid (0 if that failed)."""
    started = time.monotonic()
    read_end, write_end = os.pipe()
    middle = os.fork()
    if middle == 0:  # the middle process: fork the worker, say its pid, vanish
        try:
            os.close(read_end)
            worker = os.fork()
            if worker == 0:
                os.close(write_end)
                _become_worker(boot_json, channel_fd, control, started, preloaded)
            os.write(write_end, str(worker).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read()
    os.waitpid(middle, 0)
    return int(answer) if answer else 0


def _become_worker(
    boot_json: str, channel_fd: int, control: socket.socket, started: float, preloaded: Any
) -> None:
    """In the forked worker: drop what belongs to the template, then run as a worker."""
    try:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
        control.close()
        # gc stays frozen: unfreezing would have the collector walk, and so copy, every
        # page shared with the template.
        os.closerange(3, channel_fd)  # the template's log file and anything else it held
        os.closerange(channel_fd + 1, _max_fd())
        from hiscrm.worker.bootstrap import forked_main

        forked_main(boot_json, channel_fd, started, preloaded)
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(ExitCode.BOOT_FAILED)


def _max_fd() -> int:
    try:
        return max(int(name) for name in os.listdir("/proc/self/fd")) + 1
    except (OSError, ValueError):
        return os.sysconf("SC_OPEN_MAX")
