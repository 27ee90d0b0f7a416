"""Length-prefixed frames over one end of a ``multiprocessing.Pipe``, driven by asyncio.

The wire format is that of ``multiprocessing.Connection.send_bytes`` (a 4-byte big-endian
length, then the payload), so either end may be a plain Connection. Unlike
``Connection.recv_bytes``, reading never blocks the event loop on a half-written frame and
writing never blocks on a peer that stopped reading: asyncio's transport buffers both ways.

No frame exceeds ``MAX_FRAME_BYTES`` (1 MiB): the sender refuses to send one, and a frame
that announces a negative or larger length means the stream can no longer be trusted; the
channel closes with :class:`FrameError` and the owner decides what follows.
"""

import asyncio
import os
import socket
import struct
from collections.abc import Callable
from multiprocessing.connection import Connection

HEADER = struct.Struct("!i")
MAX_FRAME_BYTES = 1024 * 1024


class FrameError(Exception):
    """The byte stream is not a sequence of valid frames."""


def frame(payload: bytes) -> bytes:
    """Encode one frame the way ``Connection.send_bytes`` would."""
    return HEADER.pack(len(payload)) + payload


class Channel(asyncio.Protocol):
    """One end of a pipe. ``on_frame`` gets each payload; ``on_close`` gets None on a clean
    end of stream, or the error that ended it."""

    def __init__(
        self,
        on_frame: Callable[[bytes], None],
        on_close: Callable[[Exception | None], None],
    ) -> None:
        self._on_frame = on_frame
        self._on_close = on_close
        self._buffer = bytearray()
        self._transport: asyncio.WriteTransport | None = None
        self._closed = False
        self._error: Exception | None = None
        self._writable = asyncio.Event()
        self._writable.set()

    # asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        offset, size = 0, len(buffer)
        while size - offset >= HEADER.size:
            (length,) = HEADER.unpack_from(buffer, offset)
            if length < 0 or length > MAX_FRAME_BYTES:
                self._fail(FrameError(f"frame announces {length} bytes (limit {MAX_FRAME_BYTES})"))
                return
            end = offset + HEADER.size + length
            if end > size:
                break
            payload = bytes(buffer[offset + HEADER.size : end])
            offset = end
            self._on_frame(payload)
            if self._closed:
                return
        if offset:
            del buffer[:offset]

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        # Only a broken frame is reported as an error. A reset (the peer died with bytes
        # unread) or any other OSError simply ends the stream.
        self._closed = True
        self._writable.set()
        self._on_close(self._error)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # API ----------------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._transport is not None and not self._closed

    @property
    def write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() if self._transport else 0

    def send(self, payload: bytes) -> bool:
        """Queue one frame; False if the channel is already closed."""
        if len(payload) > MAX_FRAME_BYTES:
            raise FrameError(
                f"refusing to send a {len(payload)}-byte frame (limit {MAX_FRAME_BYTES})"
            )
        if not self.is_open or self._transport is None:
            return False
        self._transport.write(frame(payload))
        return True

    async def flushed(self) -> None:
        """Wait until every queued byte is handed to the kernel (or the channel closed)."""
        if self._transport is not None and not self._closed:
            self._transport.set_write_buffer_limits(high=0)
            await self._writable.wait()

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def _fail(self, error: Exception) -> None:
        self._error = error
        self._closed = True
        if self._transport is not None:
            self._transport.abort()


async def open_channel(
    conn: Connection | socket.socket,
    on_frame: Callable[[bytes], None],
    on_close: Callable[[Exception | None], None],
) -> Channel:
    """Take over ``conn`` (a multiprocessing Connection, which is closed, or a connected
    stream socket) and return an asyncio Channel on it."""
    if isinstance(conn, socket.socket):
        sock = conn
    else:
        fd = os.dup(conn.fileno())
        conn.close()
        sock = socket.socket(fileno=fd)
    loop = asyncio.get_running_loop()
    _, channel = await loop.create_unix_connection(lambda: Channel(on_frame, on_close), sock=sock)
    return channel
