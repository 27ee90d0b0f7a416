"""uvicorn embedded in the master's event loop.

The master binds the listening socket itself before any worker starts (a port in use is
an error at start, and port 0 gives the real address for ``master.json``). The server
runs as a task of the master's loop and leaves signal handling to the master; instead
of uvicorn's 0.1 s polling main loop it sleeps until told to stop, waking once a second
on the beat (with the master's other timers) to refresh the Date header.

Connections are limited (:mod:`.connections`): at most ``[api] max_connections`` open,
fewer if the file-descriptor limit leaves less room once workers, pipes, logs, the store
and log followers have theirs; the soft limit is raised to the hard one at start.
"""

import asyncio
import resource
import socket
from collections.abc import Generator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI
from structlog.typing import FilteringBoundLogger

from hiscrm.config import Config
from hiscrm.master.api.beat_wakeup import BeatWakeup
from hiscrm.master.api.connections import ConnectionLimits, GuardedConfig
from hiscrm.master.api.listen import LISTEN_BACKLOG

DATE_REFRESH_S = 1.0
ACCEPT_BATCH = 32  # the most connections the loop accepts per wake-up (asyncio's backlog)
# File descriptors kept for everything but API connections: the store and its readers,
# logs, the template, stdio, the loop's own (BASE); connections accepted but not yet
# counted, or closed to make room but not yet gone (a few accept batches: ACCEPTING); each
# worker's pipe and pidfd, twice over during a reload (PER_WORKER); each log follower's
# file (PER_FOLLOWER).
FD_RESERVE_BASE = 256
FD_RESERVE_ACCEPTING = 4 * ACCEPT_BATCH
FD_RESERVE_PER_WORKER = 8
FD_RESERVE_PER_FOLLOWER = 2
FD_LIMIT_CEILING = 1 << 20  # when the hard limit is "unlimited"
MIN_CONNECTIONS = 8


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._stop = BeatWakeup()

    @contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the master handles signals

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        for sock in sockets or ():  # asyncio listened with its per-wake-up batch: a
            sock.listen(LISTEN_BACKLOG)  # longer queue absorbs a burst without SYN retries

    async def main_loop(self) -> None:
        counter = 0
        while not await self.on_tick(counter):
            counter += 10  # on_tick refreshes the Date header on multiples of 10
            if await self._stop.wait(DATE_REFRESH_S):
                self.should_exit = True

    def stop(self) -> None:
        self.should_exit = True
        self._stop.wake()


def raise_fd_limit(log: FilteringBoundLogger) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit where allowed; the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = FD_LIMIT_CEILING if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            log.info("file-descriptor limit raised", old=soft, new=target)
            soft = target
        except (ValueError, OSError) as exc:
            log.warning(
                "cannot raise the file-descriptor limit", soft=soft, hard=hard, error=str(exc)
            )
    return FD_LIMIT_CEILING if soft == resource.RLIM_INFINITY else soft


def fd_reserve(workers: int, log_followers: int) -> int:
    """File descriptors the master keeps for everything but API connections."""
    return (
        FD_RESERVE_BASE
        + FD_RESERVE_ACCEPTING
        + FD_RESERVE_PER_WORKER * workers
        + FD_RESERVE_PER_FOLLOWER * log_followers
    )


def connection_cap(configured: int, fd_limit: int, reserve: int) -> int:
    """How many API connections may be open: the configured number, or what the fd limit
    leaves beyond the reserve if that is less (never below a handful)."""
    return max(MIN_CONNECTIONS, min(configured, fd_limit - reserve))


class ApiServer:
    def __init__(
        self, app: FastAPI, sock: socket.socket, config: Config, log: FilteringBoundLogger
    ) -> None:
        self._app = app
        self._sock = sock
        self._config = config
        self._log = log
        # max_connections is lowered at start if the fd limit leaves less room
        self.limits = ConnectionLimits(
            config.api.max_connections, config.api.request_read_timeout_s, log
        )
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> asyncio.Task[None]:
        api = self._config.api
        fd_limit = raise_fd_limit(self._log)
        reserve = fd_reserve(self._config.workers, api.max_log_followers)
        cap = connection_cap(api.max_connections, fd_limit, reserve)
        if cap < api.max_connections:
            self._log.warning(
                "API connections limited by the file-descriptor limit",
                max_connections=cap,
                configured=api.max_connections,
                fd_limit=fd_limit,
                fd_reserve=reserve,
            )
        self.limits.max_connections = cap
        config = GuardedConfig(
            self._app,
            self.limits,
            log_config=None,  # uvicorn's loggers go through the master's logging
            access_log=False,
            lifespan="off",
            backlog=ACCEPT_BATCH,
            timeout_graceful_shutdown=2,
        )
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]), name="api")
        return self._task

    async def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
        if self._task is not None:
            await self._task
