"""Starting workers by forking a warm template (``hiscrm/worker/template.py``).

Before every fork the template's code fingerprint is checked against the disk; if a
file changed, a new template (a fresh interpreter) is started first and the old one is
told to exit, so a restart never runs stale code. A template that dies is replaced at
the next start. A template that cannot load the code (a platform raising at import) is
not retried until its backoff ends; meanwhile workers start by plain spawn, fail at boot
and show the traceback in their own logs, as without a template.
"""

import asyncio
import json
import multiprocessing
import os
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from structlog.typing import FilteringBoundLogger

from hiscrm.backoff import RestartBackoff
from hiscrm.channel import open_channel
from hiscrm.code_fingerprint import CodeFile, DiskCheck
from hiscrm.config import Config
from hiscrm.entrypoint import Entrypoint
from hiscrm.logfile import tail_lines
from hiscrm.master.events import Event
from hiscrm.master.launcher import SpawnLauncher, WorkerProcess
from hiscrm.protocol import WorkerBoot

TEMPLATE_ENTRYPOINT = Entrypoint("hiscrm.worker.template:main")
FORK_TIMEOUT_S = 10.0
MAX_MESSAGE = 1 << 20
SPARE_AFTER_S = 0.05  # after a spare is used, when to ask for the next one


class TemplateGone(Exception):
    pass


@dataclass
class Spare:
    """A worker forked ahead by the template, waiting on ``sock`` for its boot data."""

    pid: int
    sock: socket.socket


class _Template:
    """One template process and the control socket to it."""

    def __init__(self, boot_json: str, log: FilteringBoundLogger) -> None:
        self._log = log
        self._loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        context = multiprocessing.get_context("spawn")
        self.process = context.Process(
            target=TEMPLATE_ENTRYPOINT, args=(boot_json, theirs), name="hiscrm-template"
        )
        try:
            self.process.start()
        finally:
            theirs.close()
        assert self.process.pid is not None
        self.pid: int = self.process.pid
        ours.setblocking(False)
        self._control = ours
        self.ready: asyncio.Future[bool] = self._loop.create_future()
        self.code_files: list[CodeFile] = []
        self.code_version: str | None = None
        self.error: str | None = None
        self.alive = True
        self.retired = False
        self._forks: deque[asyncio.Future[int]] = deque()
        self.spare: Spare | None = None  # a worker forked ahead, waiting to be told who
        self._exit_fd = os.pidfd_open(self.pid)
        self._loop.add_reader(self._control.fileno(), self._on_message)
        self._loop.add_reader(self._exit_fd, self._on_exit)

    def _on_message(self) -> None:
        try:
            data, fds, _, _ = socket.recv_fds(self._control, MAX_MESSAGE, 1)
        except BlockingIOError:
            return
        except OSError as exc:
            self._log.error("template control socket failed", pid=self.pid, exc_info=exc)
            data, fds = b"", []
        if not data:
            self._loop.remove_reader(self._control.fileno())
            return
        message: dict[str, Any] = json.loads(data)
        match message.get("type"):
            case "ready":
                self.code_files = [CodeFile(**f) for f in message["code_files"]]
                self.code_version = message["code_version"]
                _resolve(self.ready, True)
            case "failed":
                self.error = f"{message['error']}\n{message['traceback']}"
                _resolve(self.ready, False)
            case "spare" if len(fds) == 1:
                self._drop_spare()
                self.spare = Spare(int(message["pid"]), socket.socket(fileno=fds.pop()))
            case "forked":
                if self._forks:
                    _resolve(self._forks.popleft(), int(message["pid"]))
            case other:
                self._log.error("template sent something unknown", pid=self.pid, type=other)
        for fd in fds:
            os.close(fd)

    def take_spare(self) -> "Spare | None":
        """The waiting spare, if any; the template is asked for the next one."""
        spare, self.spare = self.spare, None
        if spare is not None:  # not at once: forking it would compete with this start
            self._loop.call_later(SPARE_AFTER_S, self._request_spare)
        return spare

    def _request_spare(self) -> None:
        if self.alive and not self.retired:
            self._request({"type": "spare"})

    def _drop_spare(self) -> None:
        """Close the spare's socket (so it exits) and reap it when it has."""
        if self.spare is not None:
            self.spare.sock.close()
            _reap_when_gone(self._loop, self.spare.pid, self._log)
            self.spare = None

    def _request(self, request: dict[str, Any]) -> None:
        try:
            self._control.send(json.dumps(request).encode())
        except OSError as exc:  # it is dying: its exit is on the way
            self._log.error("cannot send to the template", pid=self.pid, exc_info=exc)

    def _on_exit(self) -> None:
        self._loop.remove_reader(self._exit_fd)
        os.close(self._exit_fd)
        self._loop.remove_reader(self._control.fileno())
        self._control.close()
        self.process.join(timeout=0)
        self.alive = False
        _resolve(self.ready, False)
        while self._forks:
            _resolve(self._forks.popleft(), 0)
        self._drop_spare()
        if not self.retired and self.ready.result():
            self._log.error(
                "fork template died; the next start makes a new one",
                pid=self.pid,
                exitcode=self.process.exitcode,
            )

    async def fork(self, boot: WorkerBoot) -> tuple[int, socket.socket]:
        """A new worker's pid and the master's end of its channel."""
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
            pid = await asyncio.wait_for(answer, FORK_TIMEOUT_S)
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
        self._drop_spare()
        if self.alive:
            try:
                self._control.send(b'{"type": "exit"}')
            except OSError as exc:
                self._log.error(
                    "cannot tell the old template to exit; killing it", pid=self.pid, exc_info=exc
                )
                self.process.kill()


def _reap_when_gone(loop: asyncio.AbstractEventLoop, pid: int, log: FilteringBoundLogger) -> None:
    """Reap an unused spare (a child of the master) once it has exited."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return  # reaped already

    def reap() -> None:
        loop.remove_reader(fd)
        try:
            os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG)
        except ChildProcessError as exc:
            log.error("cannot reap a template's spare", pid=pid, exc_info=exc)
        finally:
            os.close(fd)

    loop.add_reader(fd, reap)


def _resolve(future: "asyncio.Future[Any]", value: Any) -> None:
    if not future.done():
        future.set_result(value)


class TemplateLauncher:
    def __init__(self, config: Config, spawn: SpawnLauncher, log: FilteringBoundLogger) -> None:
        self._config = config
        self._spawn = spawn
        self._log = log
        self._disk = DiskCheck()
        self._template: _Template | None = None
        self._retired: list[_Template] = []
        sup = config.supervision
        self._backoff = RestartBackoff(
            sup.backoff_initial_s, sup.backoff_max_s, sup.backoff_reset_after_s
        )
        self._not_before = 0.0
        self.forks = 0
        self.spares_used = 0
        self.spawns = 0
        self.templates_started = 0
        logs = config.state_dir / "logs"
        self._log_path = logs / "template.log"
        self._template_boot = dict(
            {
                "log_path": str(self._log_path),
                "log_max_bytes": config.logs.max_bytes,
                "log_backups": config.logs.backups,
                "master_pid": os.getpid(),
                "platforms": config.platform_specs,
                "code_packages": config.code.packages,
            }
        )  # and a sample worker boot, for its spares to rehearse with

    @property
    def template(self) -> _Template | None:
        return self._template

    def known_pids(self) -> set[int]:
        """Children of the master that the template launcher reaps itself."""
        self._retired = [t for t in self._retired if t.alive]
        templates = [t for t in (self._template, *self._retired) if t is not None]
        return {t.pid for t in templates} | {t.spare.pid for t in templates if t.spare}

    async def start(self, boot: WorkerBoot, post: Callable[[Event], None]) -> WorkerProcess:
        template = await self._ready_template(boot)
        if template is None:
            self.spawns += 1
            return await self._spawn.start(boot, post)
        try:
            pid, channel_end = self._start_spare(template, boot) or await template.fork(boot)
        except TemplateGone as exc:
            self._log.error("fork from the template failed; starting by spawn", exc_info=exc)
            self._template = None
            self.spawns += 1
            return await self._spawn.start(boot, post)
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
        self.forks += 1
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
            self._log.error("the template's spare is gone; forking", pid=spare.pid, exc_info=exc)
            ours.close()
            _reap_when_gone(asyncio.get_running_loop(), spare.pid, self._log)
            return None
        finally:
            theirs.close()
            spare.sock.close()
        self.spares_used += 1
        return spare.pid, ours

    async def _ready_template(self, sample: WorkerBoot) -> _Template | None:
        template = self._template
        if template is not None and template.alive and not template.ready.done():
            await template.ready  # being started for another worker a moment ago
        if (
            template is not None
            and template.alive
            and template.ready.done()
            and template.ready.result()
        ):
            changed = self._disk.changed(template.code_files)
            if not changed:
                return template
            self._log.info(
                "code changed since the template loaded it; starting a new template",
                old_pid=template.pid,
                changed=changed[:5],
            )
            template.retire()
            self._retired.append(template)
        self._template = None
        if time.monotonic() < self._not_before:
            return None
        return await self._new_template(sample)

    async def _new_template(self, sample: WorkerBoot) -> _Template | None:
        began = time.monotonic()
        boot_json = json.dumps({**self._template_boot, "sample_boot": sample.model_dump_json()})
        template = self._template = _Template(boot_json, self._log)
        self.templates_started += 1
        try:
            ok = await asyncio.wait_for(
                asyncio.shield(template.ready), self._config.supervision.start_timeout_s
            )
        except TimeoutError:
            ok = False
            template.error = "it did not get ready in time"
            template.process.kill()
        if ok:
            self._log.info(
                "fork template ready",
                pid=template.pid,
                code_version=template.code_version,
                took_ms=round((time.monotonic() - began) * 1000, 1),
            )
            return template
        delay = self._backoff.record_failure(0.0, during_start=True)
        self._not_before = time.monotonic() + delay
        self._template = None
        self._log.error(
            "fork template could not load the worker code; workers start by spawn meanwhile",
            pid=template.pid,
            error=(template.error or "").splitlines()[:1],
            retry_in_s=round(delay, 2),
            log_tail=tail_lines(self._log_path, 20),
        )
        return None

    def stop(self) -> None:
        for template in (self._template, *self._retired):
            if template is not None and template.alive:
                template.retire()
