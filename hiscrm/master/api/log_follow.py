"""Following a worker's log file across rotations, for ``logs?follow=true``.

Woken by file-system events (watchfiles), not by polling. When the file is rotated, the
rest of the old file is read to its end before the new one is opened, so no line is
lost between the two.
"""

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

import watchfiles

READ_CHUNK = 64 * 1024


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


async def follow(path: Path, stop: asyncio.Event) -> AsyncIterator[bytes]:
    """Bytes appended to ``path`` from now on, until ``stop`` is set."""
    handle = _open(path, at_end=True)
    try:
        async for _ in watchfiles.awatch(
            path.parent,
            watch_filter=lambda change, changed: Path(changed).name.startswith(path.name),
            stop_event=stop,
            debounce=50,
            step=20,
            rust_timeout=1000,
        ):
            if handle is None:
                handle = _open(path, at_end=False)
            if handle is None:
                continue
            async for data in _drain(handle):
                yield data
            if _rotated(path, handle):  # the old file is read to its end: on to the new one
                handle.close()
                handle = _open(path, at_end=False)
                if handle is not None:
                    async for data in _drain(handle):
                        yield data
    finally:
        if handle is not None:
            handle.close()
