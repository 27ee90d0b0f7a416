"""The warm template: a process that has imported the worker runtime and every platform,
and forks workers from that state on request, in milliseconds instead of the few hundred
a fresh interpreter takes.

A platform that cannot be loaded does not stop it: the failure (and the files the failed
import went through, which count in its fingerprint, so a fix brings a new template) is
handed to the workers it forks, which try that platform again and fail its accounts
only. It fails (``failed``) only when the worker runtime itself cannot be loaded.

It is started by the master as a fresh interpreter (so it loads the code on disk now;
``hiscrm/master/supervision/template_spawn.py``), loads the worker runtime at once, and
then waits for its boot data (the settings every worker shares, the platforms, its log
file): the master sends it once it has read its configuration, so the first template
loads while the master does. It then loads the platforms and reports its code
fingerprint; the master checks that against the disk before every fork and starts a new
template when the code has changed, so a fork never runs stale code. It holds no account
state and no event loop, threads or open files a worker would inherit.

Each worker is forked twice (template → short-lived middle process → worker) so that,
when the middle process exits, the worker becomes a child of the master, which is a
child subreaper: the master reaps it, gets its exit status, and the worker's
parent-death signal refers to the master. A template can therefore be replaced at any
time without touching the workers it forked.

Messages on the control socket (SOCK_SEQPACKET, one JSON object per message):
master → template ``{"type": "boot", "log_path": ..., "sample": ...}`` (first),
``{"type": "fork", "boot": ...}`` with the worker's channel socket attached
(SCM_RIGHTS), ``{"type": "exit"}``; template → master ``ready`` (pid, code
version, files), ``failed`` (error, traceback), ``forked`` (pid).
"""

import gc
import json
import os
import random
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from multiprocessing import resource_tracker
from typing import Any

from msgspec.structs import replace

from hiscrm import lean_imports, prctl, process_title
from hiscrm.exit_codes import ExitCode
from hiscrm.worker import bootstrap

MAX_MESSAGE = 1 << 20
FILES_PER_MESSAGE = 200


def main(control_fd: int, master_pid: int) -> None:
    """``control_fd``: the control socket; ``master_pid``: the process that started it
    (it goes when that one does)."""
    control = socket.socket(fileno=control_fd)
    os.setsid()
    process_title.set_title(process_title.TEMPLATE)
    if sys.platform.startswith("linux"):
        prctl.set_parent_death_signal(signal.SIGKILL)  # it holds nothing worth saving
        if os.getppid() != master_pid:  # the master went before the signal was asked for
            os._exit(ExitCode.ORPHANED)
    # A signal to the whole group or service (Ctrl-C, systemd's stop) is the master's to
    # handle: the template goes when the master retires it, or with the master.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    runtime_failed: BaseException | None = None
    runtime_traceback = ""
    try:  # while the master reads its configuration
        lean_imports.import_structlog()
        from hiscrm.protocol import WorkerBoot, schema_hash
        from hiscrm.worker.platform_set import add_plugin_paths, load_platforms
        from hiscrm.worker.runtime import Preloaded, code_fingerprint
    except BaseException as exc:  # said once the log is open, as any other failure
        runtime_failed, runtime_traceback = exc, traceback.format_exc()
    sample_boot, log_path, spares = _receive_boot(control)
    boot = {**json.loads(sample_boot), "log_path": log_path}
    bootstrap.capture_output(boot)
    try:
        if runtime_failed is not None:
            raise runtime_failed
        sample = WorkerBoot.model_validate(boot)
        add_plugin_paths(sample.plugin_paths)
        platforms = load_platforms(sample.platforms)  # one that fails fails its accounts only
        for failed in platforms.failures.values():
            print(f"template: {failed.summary}; its accounts will be failed\n{failed.reason}")
        schema_hash()  # computed once here, not in every worker
        files, version = code_fingerprint(sample, platforms)
    except BaseException as exc:
        text = runtime_traceback or traceback.format_exc()
        print(f"template: cannot load the worker code\n{text}", file=sys.stderr)
        _send(
            control, {"type": "failed", "error": f"{type(exc).__name__}: {exc}", "traceback": text}
        )
        os._exit(ExitCode.BOOT_FAILED)
    preloaded = Preloaded(platforms, files, version)
    # What is here now is shared with every fork: the collector keeps off it. No collect
    # first: loading leaves next to no garbage, and walking the heap costs ~15 ms.
    gc.freeze()
    print(f"template pid {os.getpid()} ready, code {version}", file=sys.stderr)
    dumped = [f.model_dump() for f in files]
    for start in range(0, len(dumped), FILES_PER_MESSAGE):  # a message holds ~200 KB
        _send(control, {"type": "files", "files": dumped[start : start + FILES_PER_MESSAGE]})
    master_pid = int(boot["master_pid"])
    # The spares first, so that a master waiting for this template starts its first
    # workers from spares (one each) the moment it hears "ready".
    _offer_spares(control, preloaded, master_pid, sample_boot, max(1, spares))
    _send(control, {"type": "ready", "pid": os.getpid(), "code_version": version})
    _serve(control, preloaded, master_pid, sample_boot)


def _receive_boot(control: socket.socket) -> tuple[str, str, int]:
    """The first message: the sample boot (JSON), the log path, and how many spares to
    fork once ready. The master gone, or telling it to exit before that: it exits."""
    try:
        data = control.recv(MAX_MESSAGE)
    except ConnectionError:
        data = b""
    if not data:
        os._exit(ExitCode.ORPHANED)
    message = json.loads(data)
    if message.get("type") != "boot":
        os._exit(ExitCode.OK)  # "exit": not needed after all
    return str(message["sample"]), str(message["log_path"]), int(message.get("spares", 1))


def _send(control: socket.socket, message: dict[str, Any]) -> None:
    control.send(json.dumps(message).encode())


def _serve(control: socket.socket, preloaded: Any, master_pid: int, sample_boot: str) -> None:
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
        if request["type"] == "spare":  # the last one was used
            _offer_spares(control, preloaded, master_pid, sample_boot, 1)
            continue
        if request["type"] == "fork" and len(fds) == 1:
            pid = _fork_worker(request["boot"], fds[0], control, preloaded)
            os.close(fds[0])
            _send(control, {"type": "forked", "pid": pid})
            continue
        for fd in fds:
            os.close(fd)
        print(f"template: unknown request {request!r:.200}", file=sys.stderr)


def _offer_spares(
    control: socket.socket, preloaded: Any, master_pid: int, sample_boot: str, count: int
) -> None:
    """Fork ``count`` spare workers and give the master the sockets that will start them.

    A spare is a worker forked ahead of time and prepared as far as it can be without
    knowing which worker it will be; it waits on its socket. The master sends it the
    boot data and the channel directly, so a respawn costs no fork and no round trip
    through the template. It exits when that socket closes unused (the master retired
    its template, or is gone)."""
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(count)]

    def spare(theirs: socket.socket) -> Callable[[], None]:
        return lambda: _spare_main(theirs, control, preloaded, master_pid, sample_boot)

    pids = _double_fork([spare(theirs) for _, theirs in pairs])
    for (ours, theirs), pid in zip(pairs, pids, strict=True):
        theirs.close()
        try:
            if pid:
                message = json.dumps({"type": "spare", "pid": pid}).encode()
                socket.send_fds(control, [message], [ours.fileno()])
        finally:
            ours.close()


def _spare_main(
    sock: socket.socket,
    control: socket.socket,
    preloaded: Any,
    master_pid: int,
    sample_boot: str,
) -> None:
    from hiscrm.worker.runtime import rehearse

    process_title.set_title(process_title.SPARE)
    _drop_template_state(control, keep=sock.fileno())
    bootstrap.prepare_forked(master_pid)
    loop = rehearse(sample_boot, preloaded)
    try:
        data, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE, 1)
    except OSError:  # not a close (that reads as b""): say so in the template's log
        traceback.print_exc()
        data, fds = b"", []
    started = time.monotonic()
    sock.close()
    if not data or len(fds) != 1:  # never used: its template was retired, or the master died
        os._exit(ExitCode.OK)
    bootstrap.run_forked(data.decode(), fds[0], started, replace(preloaded, loop=loop))


def _fork_worker(boot_json: str, channel_fd: int, control: socket.socket, preloaded: Any) -> int:
    """Fork a worker for this request now; its pid (0 if that failed)."""
    started = time.monotonic()

    def become_worker() -> None:
        _drop_template_state(control, keep=channel_fd)
        bootstrap.forked_main(boot_json, channel_fd, started, preloaded)

    return _double_fork([become_worker])[0]


def _double_fork(children: list[Callable[[], object]]) -> list[int]:
    """Run each of ``children`` in a grandchild, by way of one middle process that forks
    them all and exits, so that they become the master's (the subreaper's) children: one
    middle process for a batch, not one each (its exit costs more than a fork). Their
    pids, 0 for one that could not be forked."""
    read_end, write_end = os.pipe()
    try:
        middle = os.fork()
    except OSError as exc:
        print(f"template: cannot fork: {exc}", file=sys.stderr)
        os.close(read_end)
        os.close(write_end)
        return [0] * len(children)
    if middle == 0:  # the middle process: fork the workers, say their pids, vanish
        try:
            os.close(read_end)
            for child in children:
                grandchild = os.fork()
                if grandchild == 0:
                    os.close(write_end)
                    try:
                        child()
                    except BaseException:
                        traceback.print_exc()
                    finally:  # a worker's own failures have exit codes of their own
                        os._exit(ExitCode.CRASHED)
                os.write(write_end, f"{grandchild}\n".encode())
        except BaseException:
            traceback.print_exc()  # into template.log; the template then reports pid 0
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read()
    os.waitpid(middle, 0)
    pids = [int(pid) for pid in answer.split()]
    return pids + [0] * (len(children) - len(pids))


def _drop_template_state(control: socket.socket, keep: int) -> None:
    """In a forked child: no template signal handlers, control socket, open files or
    output streams."""
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    control.close()
    # gc stays frozen: unfreezing would have the collector walk, and so copy, every
    # page shared with the template.
    kept = {keep}
    # multiprocessing's resource tracker (the master's) is shared, as with spawn;
    # closing its fd would leave the tracker writing to whatever reuses the number.
    tracker_fd = getattr(resource_tracker._resource_tracker, "_fd", None)
    if isinstance(tracker_fd, int):
        kept.add(tracker_fd)
    low = 3
    for fd in sorted(kept):  # the template's log file and anything else it held
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, _max_fd())
    # Until the worker opens its own log: plain streams on fds 1 and 2 (the template's
    # log), not the template's line streams, whose file is closed now.
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    random.seed()  # never the template's sequence (os.fork reseeds too; be explicit)


def _max_fd() -> int:
    try:
        return max(int(name) for name in os.listdir("/proc/self/fd")) + 1
    except (OSError, ValueError):
        return os.sysconf("SC_OPEN_MAX")
