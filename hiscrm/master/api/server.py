"""uvicorn embedded in the master's event loop.

The master binds the listening socket itself before any worker starts (a port in use is
an error at start, and port 0 gives the real address for ``master.json``). The server
runs as a task of the master's loop and leaves signal handling to the master; instead
of uvicorn's 0.1 s polling main loop it sleeps until told to stop, waking once a second
to refresh the Date header.
"""

import asyncio
import socket
from collections.abc import Generator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI

DATE_REFRESH_S = 1.0


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``; OSError says why not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.set_inheritable(False)
    except OSError:
        sock.close()
        raise
    return sock


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._stop = asyncio.Event()

    @contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the master handles signals

    async def main_loop(self) -> None:
        counter = 0
        while not await self.on_tick(counter):
            counter += 10  # on_tick refreshes the Date header on multiples of 10
            try:
                await asyncio.wait_for(self._stop.wait(), DATE_REFRESH_S)
            except TimeoutError:
                continue
            self.should_exit = True

    def stop(self) -> None:
        self.should_exit = True
        self._stop.set()


class ApiServer:
    def __init__(self, app: FastAPI, sock: socket.socket) -> None:
        config = uvicorn.Config(
            app,
            log_config=None,  # uvicorn's loggers go through the master's logging
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
        self._server = _Server(config)
        self._sock = sock
        self._task: asyncio.Task[None] | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]), name="api")
        return self._task

    async def stop(self) -> None:
        self._server.stop()
        if self._task is not None:
            await self._task
