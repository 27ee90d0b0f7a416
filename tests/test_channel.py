"""Frames over a real multiprocessing pipe: large, many, and broken."""

import asyncio
import multiprocessing
import os

import pytest

from hiscrm.channel import HEADER, MAX_FRAME_BYTES, Channel, FrameError, open_channel


async def _pair() -> tuple[
    Channel, list[bytes], list[Exception | None], multiprocessing.connection.Connection
]:
    ours, theirs = multiprocessing.Pipe(duplex=True)
    received: list[bytes] = []
    closed: list[Exception | None] = []
    channel = await open_channel(ours, received.append, closed.append)
    return channel, received, closed, theirs


async def _until(condition, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


@pytest.mark.timeout(30)
def test_frames_interoperate_with_plain_connections() -> None:
    async def main() -> None:
        channel, received, closed, peer = await _pair()
        big = os.urandom(MAX_FRAME_BYTES)
        payloads = [b"", b"x", big] + [f"m{i}".encode() for i in range(1000)]
        loop = asyncio.get_running_loop()

        def send_all() -> None:
            for p in payloads:
                peer.send_bytes(p)

        await loop.run_in_executor(None, send_all)
        await _until(lambda: len(received) == len(payloads))
        assert received == payloads
        channel.send(b"reply")
        channel.send(big)
        got = await loop.run_in_executor(None, lambda: [peer.recv_bytes(), peer.recv_bytes()])
        assert got == [b"reply", big]
        peer.close()
        await _until(lambda: closed == [None])
        assert not channel.is_open

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_an_oversized_frame_closes_the_channel_with_frame_error() -> None:
    async def main() -> None:
        channel, received, closed, peer = await _pair()
        peer.send_bytes(b"fine")
        os.write(peer.fileno(), HEADER.pack(-1) + b"junk")
        await _until(lambda: len(closed) == 1)
        assert received == [b"fine"]
        assert isinstance(closed[0], FrameError)
        assert "frame announces -1 bytes" in str(closed[0])
        assert channel.send(b"x") is False
        peer.close()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_frames_over_the_limit_are_refused_on_both_ends() -> None:
    async def main() -> None:
        channel, _, closed, peer = await _pair()
        with pytest.raises(FrameError, match="refusing to send"):
            channel.send(b"x" * (MAX_FRAME_BYTES + 1))

        def send_too_big() -> None:
            try:
                peer.send_bytes(b"y" * (MAX_FRAME_BYTES + 1))
            except BrokenPipeError:  # the receiver hung up once it read the header
                return

        await asyncio.get_running_loop().run_in_executor(None, send_too_big)
        await _until(lambda: len(closed) == 1)
        assert isinstance(closed[0], FrameError)
        peer.close()

    asyncio.run(main())
