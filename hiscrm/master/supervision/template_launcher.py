"""Starting workers by forking a warm template (``hiscrm/worker/template.py``).

Before every fork the template's code fingerprint is checked against the disk; if a
file changed, the template is retired and a new one (a fresh interpreter) is started in
the background, and until it is ready workers start by plain spawn, so a restart never
runs stale code. The master's loop never waits for a template, except once before the
first workers start. A template that dies is replaced, after a backoff if it keeps
dying. A template that cannot load the code (a platform raising at import) is retried
after its backoff; meanwhile workers start by spawn, fail at boot and show the
traceback in their own logs, as without a template.
"""

import asyncio
import json
import os
import socket
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
from structlog.typing import FilteringBoundLogger

from hiscrm.backoff import RestartBackoff
from hiscrm.channel import open_channel
from hiscrm.code_fingerprint import CodeFile, DiskCheck
from hiscrm.config import Config
from hiscrm.logfile import tail_lines
from hiscrm.master.supervision.events import Event
from hiscrm.master.supervision.launcher import SpawnLauncher
from hiscrm.master.supervision.template_spawn import StartedTemplate, spawn_template
from hiscrm.master.supervision.worker_process import WorkerProcess
from hiscrm.protocol import WorkerBoot

FORK_TIMEOUT_S = 2.0  # a healthy template forks in milliseconds
MAX_MESSAGE = 1 << 20
SPARE_AFTER_S = 0.05  # after a spare is used, when to ask for the next one

ErrorLogger = Callable[..., None]


class TemplateGone(Exception):
    pass


class Spare(msgspec.Struct):
    """A worker forked ahead by the template, waiting on ``sock`` for its boot data."""

    pid: int
    sock: socket.socket


def start_template(log_path: Path, sample: WorkerBoot) -> StartedTemplate:
    """Start a template process loading the code ``sample`` names, logging to
    ``log_path``."""
    started = spawn_template()
    try:
        started.boot(sample, log_path)
    except OSError:
        started.abandon()
        raise
    return started


def same_code(early: WorkerBoot, sample: WorkerBoot) -> bool:
    """Whether a template started with ``early`` loads what one started with ``sample``
    would (the same settings and platforms, in whatever order)."""

    def key(boot: WorkerBoot) -> WorkerBoot:
        return boot.model_copy(update={"platforms": sorted(boot.platforms)})

    return key(early) == key(sample)


class _Template:
    """One template process and the control socket to it."""

    def __init__(
        self,
        started: StartedTemplate,
        log: FilteringBoundLogger,
        error: ErrorLogger,
        trouble: ErrorLogger,
        on_exit: Callable[["_Template"], None],
    ) -> None:
        self._log = log
        self._error = error  # a bug of ours: counted as the master's internal error
        self._trouble = trouble  # the template failing: counted as such
        self._on_exit_callback = on_exit
        self._loop = asyncio.get_running_loop()
        self.process = started.process
        assert self.process.pid is not None
        self.pid: int = self.process.pid
        self.began = started.began
        ours = started.control
        ours.setblocking(False)
        self._control = ours
        self.ready: asyncio.Future[bool] = self._loop.create_future()
        self.code_files: list[CodeFile] = []
        self.code_version: str | None = None
        self.error: str | None = None
        self.alive = True
        self.retired = False
        self._forks: deque[asyncio.Future[int]] = deque()
        # Workers forked ahead, waiting to be told who they are: one usually, as many as
        # the first workers when the master starts (``StartedTemplate.boot``).
        self.spares: deque[Spare] = deque()
        self._exit_fd = os.pidfd_open(self.pid)
        self._loop.add_reader(self._control.fileno(), self._on_message)
        self._loop.add_reader(self._exit_fd, self._on_exit)

    def _on_message(self) -> None:
        try:
            data, fds, _, _ = socket.recv_fds(self._control, MAX_MESSAGE, 1)
        except BlockingIOError:
            return
        except OSError as exc:  # it is dying: its exit follows and is reported then
            self._trouble("template control socket failed", pid=self.pid, error=str(exc))
            data, fds = b"", []
        if not data:
            self._loop.remove_reader(self._control.fileno())
            return
        try:
            self._handle(json.loads(data), fds)
        except (ValueError, KeyError, TypeError) as exc:  # our own template: a bug
            self._error(
                "template sent a bad message; killing it",
                pid=self.pid,
                first_bytes=repr(data[:80]),
                exc_info=exc,
            )
            self.process.kill()
        finally:
            for fd in fds:
                os.close(fd)

    def _handle(self, message: dict[str, Any], fds: list[int]) -> None:
        match message["type"]:
            case "files":  # the fingerprint comes in parts, then "ready"
                self.code_files += [CodeFile(**f) for f in message["files"]]
            case "ready":
                self.code_version = str(message["code_version"])
                _resolve(self.ready, True)
            case "failed":
                self.error = f"{message['error']}\n{message['traceback']}"
                _resolve(self.ready, False)
            case "spare" if len(fds) == 1:
                self.spares.append(Spare(int(message["pid"]), socket.socket(fileno=fds.pop())))
            case "forked":
                pid = int(message["pid"])
                waiting = self._forks.popleft() if self._forks else None
                if waiting is None or waiting.done():  # given up on: the child exits alone
                    self._trouble("a fork came too late; its process is dropped", pid=pid)
                else:
                    waiting.set_result(pid)
            case other:
                raise ValueError(f"unknown message type {other!r}")

    def take_spare(self) -> "Spare | None":
        """A waiting spare, if any; when the last is taken, the template is asked for the
        next one."""
        if not self.spares:
            return None
        spare = self.spares.popleft()
        if not self.spares:  # not at once: forking it would compete with this start
            self._loop.call_later(SPARE_AFTER_S, self._request_spare)
        return spare

    def _request_spare(self) -> None:
        if self.alive and not self.retired:
            self._request({"type": "spare"})

    def _drop_spares(self) -> None:
        """Close the spares' sockets (so they exit) and reap them when they have."""
        while self.spares:
            spare = self.spares.popleft()
            spare.sock.close()
            reap_when_gone(self._loop, spare.pid, self._error)

    def _request(self, request: dict[str, Any]) -> None:
        try:
            self._control.send(json.dumps(request).encode())
        except OSError as exc:  # it is dying: its exit is on the way
            self._trouble("cannot send to the template", pid=self.pid, error=str(exc))

    def _on_exit(self) -> None:
        self._loop.remove_reader(self._exit_fd)
        os.close(self._exit_fd)
        self._loop.remove_reader(self._control.fileno())
        self._control.close()
        self.process.poll()  # reaped: it has exited
        self.alive = False
        _resolve(self.ready, False)
        while self._forks:
            _resolve(self._forks.popleft(), 0)
        self._drop_spares()
        self._on_exit_callback(self)

    async def fork(self, boot: WorkerBoot) -> tuple[int, socket.socket]:
        """Fork a worker now (no spare was ready): its pid and the master's end of its
        channel."""
        if not self.alive:
            raise TemplateGone(f"template {self.pid} is gone")
        ours, theirs = socket.socketpair()
        try:
            request = json.dumps({"type": "fork", "boot": boot.model_dump_json()}).encode()
            socket.send_fds(self._control, [request], [theirs.fileno()])
        except OSError as exc:
            ours.close()
            raise TemplateGone(f"template {self.pid} does not take requests: {exc}") from exc
        finally:
            theirs.close()
        answer: asyncio.Future[int] = self._loop.create_future()
        self._forks.append(answer)
        try:
            async with asyncio.timeout(FORK_TIMEOUT_S):
                pid = await answer
        except TimeoutError:
            ours.close()
            raise TemplateGone(f"template {self.pid} did not fork in time") from None
        if pid <= 0:
            ours.close()
            raise TemplateGone(f"template {self.pid} could not fork")
        return pid, ours

    def retire(self) -> None:
        """Tell it to exit (the workers it forked are the master's, they stay)."""
        self.retired = True
        self._drop_spares()
        if self.alive:
            try:
                self._control.send(b'{"type": "exit"}')
            except OSError as exc:
                self._trouble(
                    "cannot tell the old template to exit; killing it", pid=self.pid, error=str(exc)
                )
                self.process.kill()


def reap_when_gone(loop: asyncio.AbstractEventLoop, pid: int, error: ErrorLogger) -> None:
    """Reap a child of the master (an unused spare) once it has exited."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return  # reaped already

    def reap() -> None:
        loop.remove_reader(fd)
        try:
            os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG)
        except ChildProcessError:
            pass  # the orphan scan was first; it logged the reaping
        except OSError as exc:
            error("cannot reap a template's spare", pid=pid, exc_info=exc)
        finally:
            os.close(fd)

    loop.add_reader(fd, reap)


def _resolve(future: "asyncio.Future[Any]", value: Any) -> None:
    if not future.done():
        future.set_result(value)


class TemplateLauncher:
    def __init__(
        self,
        config: Config,
        spawn: SpawnLauncher,
        log: FilteringBoundLogger,
        early: StartedTemplate | None = None,
    ) -> None:
        """``early``: a template the master started before it had loaded the rest of
        itself; used if it loads what the first workers need (see ``prepare``)."""
        self._config = config
        self._early = early
        self._spawn = spawn
        self._log = log
        self._disk = DiskCheck()
        self._template: _Template | None = None
        self._retired: list[_Template] = []
        self._stopped = False  # the master is done with it
        self._starting: set[int] = set()  # pids between fork and the handle that owns them
        sup = config.supervision
        self._backoff = RestartBackoff(
            sup.backoff_initial_s, sup.backoff_max_s, sup.backoff_reset_after_s
        )
        self._not_before = 0.0
        self._retry: asyncio.TimerHandle | None = None
        self._sample: WorkerBoot | None = None
        self.starts = {"spare": 0, "fork": 0, "spawn": 0}  # workers started, by how
        self.templates_started = 0
        self.template_failures = 0  # loads that failed, deaths, lost spares and forks
        self._count_error: Callable[[], object] = lambda: None  # the master's, from prepare
        logs = config.state_dir / "logs"
        self._log_path = logs / "template.log"

    def _trouble(self, event: str, **fields: Any) -> None:
        """The template (platform code it imports, a template killed or gone) failed: an
        error of what the master runs, not of the master itself."""
        self.template_failures += 1
        self._log.error(event, template_failures_total=self.template_failures, **fields)

    def _error(self, event: str, **fields: Any) -> None:
        self._count_error()
        self._log.error(event, **fields)

    @property
    def spare_ready(self) -> bool:
        """A spare waits: the next start takes milliseconds."""
        template = self._template
        return template is not None and template.alive and bool(template.spares)

    def known_pids(self) -> set[int]:
        """Children of the master that the template launcher reaps itself."""
        self._retired = [t for t in self._retired if t.alive]
        templates = [t for t in (self._template, *self._retired) if t is not None]
        spares = {spare.pid for t in templates for spare in t.spares}
        return {t.pid for t in templates} | spares | self._starting

    async def prepare(self, sample: WorkerBoot, count_error: Callable[[], object]) -> None:
        """Before the first workers start: a template, if one gets ready in time."""
        self._sample = sample
        self._count_error = count_error
        self._adopt_early(sample)
        template = self._begin_template()
        if template is not None:
            await asyncio.wait({template.ready}, timeout=self._config.supervision.start_timeout_s)

    def _adopt_early(self, sample: WorkerBoot) -> None:
        """Make the early template this launcher's own if it loads what ``sample`` needs;
        otherwise let it go."""
        early, self._early = self._early, None
        if early is None:
            return
        if early.sample is None or not same_code(early.sample, sample):
            self._log.info(
                "the template started early loads other platforms than the workers need; "
                "starting another",
                pid=early.process.pid,
            )
            early.abandon()
            return
        early.adopted = True
        self._template = self._new_template(early)

    async def start(self, boot: WorkerBoot, post: Callable[[Event], None]) -> WorkerProcess:
        self._sample = self._sample or boot
        template = self._usable_template()
        if template is None:
            self.starts["spawn"] += 1
            return await self._spawn.start(boot, post)
        how = "spare"
        try:
            started = self._start_spare(template, boot)
            if started is None:
                how = "fork"
                started = await template.fork(boot)
        except TemplateGone as exc:
            self._trouble("fork from the template failed; starting by spawn", error=str(exc))
            if template is self._template:  # not already replaced (it died meanwhile)
                self._discard(template)
            self.starts["spawn"] += 1
            return await self._spawn.start(boot, post)
        pid, channel_end = started
        self._starting.add(pid)
        worker: WorkerProcess | None = None
        try:
            worker = WorkerProcess(boot.worker_id, pid, post)
            worker.channel = await open_channel(
                channel_end, worker.on_frame, worker.on_channel_closed
            )
        except BaseException:
            channel_end.close()
            if worker is not None:
                worker.close()
            raise
        finally:
            self._starting.discard(pid)
        self.starts[how] += 1
        return worker

    def _start_spare(
        self, template: _Template, boot: WorkerBoot
    ) -> tuple[int, socket.socket] | None:
        """Start the template's spare as this worker: its pid and the master's end of
        its channel; None if there is no spare or it is gone."""
        spare = template.take_spare()
        if spare is None:
            return None
        ours, theirs = socket.socketpair()
        try:
            socket.send_fds(spare.sock, [boot.model_dump_json().encode()], [theirs.fileno()])
        except OSError as exc:
            self._trouble("the template's spare is gone; forking", pid=spare.pid, error=str(exc))
            ours.close()
            reap_when_gone(asyncio.get_running_loop(), spare.pid, self._error)
            return None
        finally:
            theirs.close()
            spare.sock.close()
        return spare.pid, ours

    def _usable_template(self) -> _Template | None:
        """The template if it is ready and its code is what is on disk. Otherwise None
        (start this worker by spawn), and a new template is on its way if need be."""
        template = self._template
        if template is None:
            self._begin_template()
            return None
        if not template.ready.done():
            return None  # still loading
        if not template.ready.result() or not template.alive:
            return None  # failed or gone: being replaced
        changed = self._disk.changed(template.code_files)
        if not changed:
            return template
        self._log.info(
            "code changed since the template loaded it; starting a new template",
            old_pid=template.pid,
            changed=changed[:5],
        )
        self._retire(template)
        self._begin_template()
        return None

    def _begin_template(self) -> _Template | None:
        """Start a new template in the background, unless one is starting or backing off."""
        if self._template is not None or self._sample is None:
            return self._template
        delay = self._not_before - time.monotonic()
        if delay > 0:
            if self._retry is None:
                self._retry = asyncio.get_running_loop().call_later(delay, self._retry_template)
            return None
        template = self._template = self._new_template(start_template(self._log_path, self._sample))
        return template

    def _new_template(self, started: StartedTemplate) -> _Template:
        template = _Template(started, self._log, self._error, self._trouble, self._on_template_exit)
        self.templates_started += 1
        template.ready.add_done_callback(lambda _: self._on_template_settled(template))
        timeout = self._config.supervision.start_timeout_s
        asyncio.get_running_loop().call_later(timeout, self._check_ready_in_time, template)
        return template

    def _retry_template(self) -> None:
        self._retry = None
        self._begin_template()

    def _check_ready_in_time(self, template: _Template) -> None:
        if not template.ready.done():
            template.error = "it did not get ready in time"
            template.process.kill()

    def _on_template_settled(self, template: _Template) -> None:
        took_ms = round((time.monotonic() - template.began) * 1000, 1)
        if template.ready.result():
            self._log.info(
                "fork template ready",
                pid=template.pid,
                code_version=template.code_version,
                took_ms=took_ms,
            )
            return
        self._discard(template)
        self._trouble(
            "fork template could not load the worker code; workers start by spawn meanwhile",
            pid=template.pid,
            error=(template.error or "it exited").splitlines()[:1],
            retry_in_s=round(self._not_before - time.monotonic(), 2),
            log_tail=tail_lines(self._log_path, 20),
        )

    def _on_template_exit(self, template: _Template) -> None:
        if template.retired or not template.ready.result():
            return  # asked to go, or it never got ready (already reported)
        if self._stopped:
            self._log.info("fork template ended as the master stops", pid=template.pid)
            return
        self._trouble(
            "fork template died; starting a new one",
            pid=template.pid,
            exitcode=template.process.returncode,
        )
        self._discard(template)
        self._begin_template()

    def _discard(self, template: _Template) -> None:
        """Give up on ``template``: retire it, and wait a backoff before the next."""
        ran_for = time.monotonic() - template.began
        never_ready = not (template.ready.done() and template.ready.result())
        delay = self._backoff.record_failure(ran_for, during_start=never_ready)
        self._not_before = time.monotonic() + delay
        self._retire(template)

    def _retire(self, template: _Template) -> None:
        if template is self._template:
            self._template = None
        if template.alive and template not in self._retired:
            self._retired.append(template)
        template.retire()

    def stop(self) -> None:
        self._stopped = True
        if self._retry is not None:
            self._retry.cancel()
        for template in (self._template, *self._retired):
            if template is not None and template.alive:
                template.retire()
