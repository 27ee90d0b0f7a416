"""Following worker log files across rotations, for ``logs?follow=true``.

Woken by file-system events (watchfiles), not by polling: one watcher per directory,
however many follow files in it (each watcher is an inotify instance and a thread of
the shared pool that also runs the API's dependencies). At most ``limit`` followers at
once; one more is refused with :class:`TooManyFollowers` (counted in
``refused_total``). When a file is rotated, the rest of the old file is read to its end
before the new one is opened, so no line is lost between the two. A follower holds one
open file and reads at most :data:`READ_CHUNK` bytes before the client has taken them.
"""

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO

import watchfiles
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send
from structlog.typing import FilteringBoundLogger

from hiscrm.logfile import tail_lines

READ_CHUNK = 64 * 1024


class TooManyFollowers(Exception):
    pass


def _open(path: Path, at_end: bool) -> BinaryIO | None:
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return None
    if at_end:
        handle.seek(0, os.SEEK_END)
    return handle


def _rotated(path: Path, handle: BinaryIO) -> bool:
    try:
        return os.stat(path).st_ino != os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return True


async def _drain(handle: BinaryIO) -> AsyncIterator[bytes]:
    """What is there, piece by piece, letting the loop breathe between pieces (a worker
    logging fast can write hundreds of megabytes between two wake-ups)."""
    while chunk := handle.read(READ_CHUNK):
        yield chunk
        await asyncio.sleep(0)


class Follower:
    """One client following one file, from the end it had when the follower was made."""

    def __init__(self, path: Path, on_close: Callable[["Follower"], None]) -> None:
        self.path = path
        self.wake = asyncio.Event()
        self.failure: str | None = None  # the watcher failed: the stream ends saying so
        self._handle = _open(path, at_end=True)
        self._on_close = on_close
        self._closed = False

    def tail(self, n: int) -> list[str]:
        """The last ``n`` lines before where this follower goes on (blocking: call it in
        a thread, before the follower is iterated)."""
        return tail_lines(self.path, n, self._handle)

    def wanted(self, name: str) -> bool:
        """Whether a change to file ``name`` concerns this follower (its rotations too)."""
        return name.startswith(self.path.name)

    async def chunks(self, first: list[str]) -> AsyncIterator[bytes]:
        if first:
            yield ("\n".join(first) + "\n").encode()
        while True:
            await self.wake.wait()
            self.wake.clear()
            if self._closed:
                return
            if self.failure is not None:
                yield f"[hiscrm: following stopped: {self.failure}]\n".encode()
                return
            if self._handle is None:
                self._handle = _open(self.path, at_end=False)
            if self._handle is None:
                continue
            async for data in _drain(self._handle):
                yield data
            if _rotated(self.path, self._handle):  # the old file is read to its end
                self._handle.close()
                self._handle = _open(self.path, at_end=False)
                if self._handle is not None:
                    async for data in _drain(self._handle):
                        yield data

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.wake.set()
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        self._on_close(self)


class _DirectoryWatch:
    """One watcher for a directory, running while anybody follows a file in it."""

    def __init__(self, directory: Path, log: FilteringBoundLogger, count_error: Callable[[], int]):
        self.directory = directory
        self.followers: set[Follower] = set()
        self._log = log
        self._count_error = count_error
        self._stop: asyncio.Event | None = None

    def add(self, follower: Follower) -> None:
        self.followers.add(follower)
        if self._stop is None:
            stop = self._stop = asyncio.Event()
            task = asyncio.create_task(self._watch(stop), name=f"watch {self.directory}")
            task.add_done_callback(lambda task: self._ended(task, stop))

    def remove(self, follower: Follower) -> None:
        self.followers.discard(follower)
        if not self.followers and self._stop is not None:
            self._stop.set()  # its task ends within one step; a new follower starts another
            self._stop = None

    def _wanted(self, change: watchfiles.Change, path: str) -> bool:
        name = os.path.basename(path)
        return any(follower.wanted(name) for follower in self.followers)

    async def _watch(self, stop: asyncio.Event) -> None:
        async for changes in watchfiles.awatch(
            self.directory,
            watch_filter=self._wanted,
            stop_event=stop,
            debounce=50,
            step=20,
            rust_timeout=1000,
            recursive=False,
        ):
            names = {os.path.basename(path) for _, path in changes}
            for follower in self.followers:
                if any(follower.wanted(name) for name in names):
                    follower.wake.set()

    def _ended(self, task: "asyncio.Task[None]", stop: asyncio.Event) -> None:
        if task.cancelled() or (exc := task.exception()) is None:
            return
        current = self._stop is stop  # not a watcher already told to stop
        self._log.error(
            "watching logs failed; their followers are ended",
            directory=str(self.directory),
            followers=len(self.followers) if current else 0,
            internal_errors_total=self._count_error(),
            exc_info=exc,
        )
        if not current:
            return
        self._stop = None
        for follower in self.followers:
            follower.failure = f"{type(exc).__name__}: {exc}"
            follower.wake.set()


class LogFollowers:
    """Every follower of the master, at most ``limit`` at once."""

    def __init__(self, limit: int, log: FilteringBoundLogger, count_error: Callable[[], int]):
        self.limit = limit
        self.active = 0  # a gauge
        self.refused_total = 0
        self._log = log
        self._count_error = count_error
        self._watches: dict[Path, _DirectoryWatch] = {}

    def open(self, path: Path) -> Follower:
        """A follower of ``path`` from its current end; close it when done (the response
        below does)."""
        if self.active >= self.limit:
            self.refused_total += 1
            raise TooManyFollowers(
                f"too many log followers ({self.active} following, the limit: "
                "[api] max_log_followers); try again later"
            )
        watch = self._watches.get(path.parent)
        if watch is None:
            watch = self._watches[path.parent] = _DirectoryWatch(
                path.parent, self._log, self._count_error
            )
        follower = Follower(path, self._closed)
        self.active += 1
        watch.add(follower)
        return follower

    def _closed(self, follower: Follower) -> None:
        self.active -= 1
        self._watches[follower.path.parent].remove(follower)


class FollowResponse(StreamingResponse):
    """Streams a follower and closes it however the response ends (also when the client
    left before the first byte, so the body was never iterated)."""

    def __init__(self, follower: Follower, first: list[str]) -> None:
        super().__init__(follower.chunks(first), media_type="text/plain")
        self._follower = follower

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._follower.close()
