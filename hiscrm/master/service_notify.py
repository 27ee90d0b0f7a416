"""Telling systemd how the master is doing (a ``Type=notify`` unit): ``READY=1`` once the
first workers have started, ``RELOADING=1`` then ``READY=1`` around a rolling reload,
``STOPPING=1`` when shutdown begins, each with a ``STATUS=`` line for ``systemctl
status``.

The protocol (sd_notify(3)) is one datagram per message to the unix socket named by
``$NOTIFY_SOCKET`` (an abstract socket when the name begins with ``@``); without it nothing
is sent. The variable is taken out of the master's environment, so its workers do not
inherit it. A send that fails is logged at error level once, and every failure counted.
(Written here: the PyPI clients are unmaintained or need libsystemd to build, and the
protocol is a few lines.)
"""

import os
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

from structlog.typing import FilteringBoundLogger

# Where a worker's start comes to rest, failed or not: the first time every worker of
# the master's start has got there, the master is ready.
SETTLED = frozenset({"running", "backoff", "boot_failed", "stopped"})


class SdNotify:
    """Sends messages to ``$NOTIFY_SOCKET``; does nothing without one."""

    def __init__(
        self, address: str | None, log: FilteringBoundLogger, count_error: Callable[[], int]
    ) -> None:
        self.address = address or None
        self._log = log
        self._count_error = count_error
        self._socket: socket.socket | None = None
        self.sent_total = 0
        self.failures_total = 0

    @classmethod
    def from_environment(
        cls, log: FilteringBoundLogger, count_error: Callable[[], int]
    ) -> "SdNotify":
        """For ``$NOTIFY_SOCKET``, which leaves the environment (workers do not get it)."""
        return cls(os.environ.pop("NOTIFY_SOCKET", None), log, count_error)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """One message of ``KEY=value`` lines; False if it could not be sent."""
        if self.address is None:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
                self._socket.setblocking(False)  # never hold up the master's loop
            self._socket.sendto("\n".join(fields).encode(), target)
        except OSError as exc:
            self.failures_total += 1
            self._count_error()
            if self.failures_total == 1:
                self._log.error(
                    "cannot notify the service manager (NOTIFY_SOCKET); further failures "
                    "are only counted",
                    address=self.address,
                    message=fields[0] if fields else None,
                    exc_info=exc,
                )
            return False
        self.sent_total += 1
        return True

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class ServiceStatus:
    """What the master tells the service manager, from the events of the supervisor (an
    ``EventSink``): ``worker.state``, ``reload.started``, ``reload.ended`` and
    ``master.stopping``. ``summary`` says how the workers are ("2/2 workers running")."""

    def __init__(
        self,
        notify: SdNotify,
        summary: Callable[[], str],
        pid: int,
        now_usec: Callable[[], int] = monotonic_usec,
    ) -> None:
        self._notify = notify
        self._summary = summary
        self._pid = pid
        self._now_usec = now_usec
        self._first: set[str] | None = None  # the workers of the master's start
        self._states: dict[str, str] = {}
        self.ready = False
        self.reloading = False
        self.stopping = False

    def started(self, worker_ids: Iterable[str]) -> None:
        """The master has started these workers: ready once each has settled."""
        self._first = set(worker_ids)
        self._check_ready()

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        if self.stopping:
            return
        match event:
            case "worker.state":
                self._states[str(data["worker"])] = str(data["state"])
                self._check_ready()
            case "reload.started" if self.ready:
                self.reloading = True
                self._notify.send(
                    "RELOADING=1",
                    f"MONOTONIC_USEC={self._now_usec()}",
                    f"STATUS=reloading the workers ({data.get('why')}); {self._summary()}",
                )
            case "reload.ended" if self.reloading:
                self.reloading = False
                error = data.get("error")
                outcome = f"reload failed: {error}" if error else "reloaded"
                self._notify.send("READY=1", f"STATUS={outcome}; {self._summary()}")
            case "master.stopping":
                self.stopping = True
                self._notify.send("STOPPING=1", f"STATUS=shutting down ({data.get('reason')})")

    def _check_ready(self) -> None:
        if self.ready or self._first is None:
            return
        if all(self._states.get(worker) in SETTLED for worker in self._first):
            self.ready = True
            self._notify.send("READY=1", f"MAINPID={self._pid}", f"STATUS={self._summary()}")
