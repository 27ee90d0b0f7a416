"""Platforms that load the system for the benchmarks (importable via PYTHONPATH=bench)."""

import asyncio
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from hiscrm.platforms.base import PlatformContext
from hiscrm.worker.sync import Syncer


def _message(n: int, prefix: str, text: str) -> dict[str, Any]:
    return {
        "id": f"{prefix}{n:08d}",
        "conversation_id": f"conv-{n % 50}",
        "direction": "inbound",
        "sender_id": f"customer-{n % 50}",
        "sender_name": "A Customer",
        "text": text,
        "sent_at": 1_763_848_020_000 + n,
    }


class Flood:
    """New inbound messages: with ``rate`` (per second) at that pace, without it as fast
    as the store takes them (``batch`` per loop turn, pausing while more than
    ``backlog`` changes wait for acknowledgement)."""

    async def run(self, ctx: PlatformContext) -> None:
        batch = int(ctx.options.get("batch", 200))
        backlog = int(ctx.options.get("backlog", 20_000))
        rate = float(ctx.options.get("rate", 0))
        n = ctx.count("message")
        loop = asyncio.get_running_loop()
        started, produced = loop.time(), 0
        while True:
            while ctx.pending() > backlog:
                await asyncio.sleep(0.005)
            for _ in range(batch):
                ctx.upsert_message(_message(n, "f", "hello, is this still available? " * 2))
                n += 1
            produced += batch
            if rate:
                await asyncio.sleep(max(0.0, started + produced / rate - loop.time()))
            else:
                await asyncio.sleep(0)


class Pinger:
    """A new inbound message every ``interval_s``; its text is the wall-clock time of the
    upsert, so a reader of the store can tell how long it took to become readable."""

    async def run(self, ctx: PlatformContext) -> None:
        interval = float(ctx.options.get("interval_s", 0.02))
        n = ctx.count("message")
        while True:
            await asyncio.sleep(interval)
            ctx.upsert_message(_message(n, "p", repr(time.time())))
            n += 1


class Customer:
    """One customer writing into one conversation (``conv-0``): a new inbound message
    every ``interval_s``, its text the wall-clock time of the upsert (as Pinger's), its
    ``sent_at`` the real time, as a chat the agent has open would see."""

    async def run(self, ctx: PlatformContext) -> None:
        interval = float(ctx.options.get("interval_s", 0.1))
        ctx.upsert_conversation({"id": "conv-0", "title": "a customer", "participants": []})
        n = ctx.count("message")
        while True:
            await asyncio.sleep(interval)
            now = time.time()
            ctx.upsert_message(
                {
                    "id": f"c{n:08d}",
                    "conversation_id": "conv-0",
                    "direction": "inbound",
                    "sender_id": "customer-0",
                    "sender_name": "A Customer",
                    "text": repr(now),
                    "sent_at": int(now * 1000),
                }
            )
            n += 1


def _syncer() -> Syncer:
    found = [o for o in gc.get_objects() if isinstance(o, Syncer)]
    assert len(found) == 1, f"expected one Syncer in this worker, found {len(found)}"
    return found[0]


class OneChange:
    """Fills the account with ``items`` messages, waits until all are acknowledged, then
    changes one of them and writes down how many bytes its sync took on the pipe (what
    its worker's syncer sent meanwhile: give it a worker of its own)."""

    async def run(self, ctx: PlatformContext) -> None:
        items = int(ctx.options["items"])
        result = Path(ctx.options["result_file"])
        started = time.monotonic()
        for n in range(ctx.count("message"), items):
            ctx.upsert_message(_message(n, "b", f"message {n} of a big account"))
            if n % 1000 == 0:
                await asyncio.sleep(0)
        syncer = _syncer()
        while ctx.pending():
            await asyncio.sleep(0.01)
        filled_s = time.monotonic() - started
        await asyncio.sleep(1.5)  # let the regular flush pass, so nothing else is in flight
        bytes_before = syncer.bytes_sent
        ctx.upsert_message(_message(7, "b", "message 7, edited"))
        while ctx.pending():
            await asyncio.sleep(0.01)
        result.write_text(
            json.dumps(
                {
                    "items": items,
                    "bytes": syncer.bytes_sent - bytes_before,
                    "fill_s": round(filled_s, 2),
                }
            )
        )
        await asyncio.Event().wait()


class Ready:
    """Appends ``ready <pid> <time_ns>`` to ``options["ready_file"]`` (one ``write(2)``)
    when its account starts running, then waits forever: what the cold-start bench
    counts, as the peer comparison's worker does."""

    async def run(self, ctx: PlatformContext) -> None:
        line = f"ready {os.getpid()} {time.time_ns()}\n".encode()
        fd = os.open(str(ctx.options["ready_file"]), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
        await asyncio.Event().wait()


class Quiet:
    """An account with nothing happening: the platform waits forever."""

    async def run(self, ctx: PlatformContext) -> None:
        await asyncio.Event().wait()


def chatter_line(mode: str, n: int) -> str:
    """A numbered ~100-byte line, so a reader can tell every line arrived once, whole."""
    return f"chatter {mode} {n:010d} " + "x" * 72 + "\n"


CHATTER_CHUNK_LINES = 640  # 64 000 bytes per write in the chunked modes


class Chatter:
    """Writes ``mb`` megabytes of numbered lines as fast as it can, one way (``mode``):
    ``fd``: ``os.write`` to fd 1 in 64 kB chunks, as C code or a child process would;
    ``chunks``: ``sys.stdout.write`` of the same chunks; ``print``: one ``print`` per line;
    ``log``: one ``ctx.log.info`` per line. Then writes its timing to ``result_file``."""

    async def run(self, ctx: PlatformContext) -> None:
        mode = str(ctx.options["mode"])
        total = int(float(ctx.options["mb"]) * 1_000_000) // len(chatter_line(mode, 0))
        result = Path(ctx.options["result_file"])
        lines: list[str] = []  # made before the clock starts
        chunks: list[str] = []
        for first in range(0, total, CHATTER_CHUNK_LINES):
            last = min(total, first + CHATTER_CHUNK_LINES)
            chunk = [chatter_line(mode, n) for n in range(first, last)]
            lines += chunk
            chunks.append("".join(chunk))
            await asyncio.sleep(0)
        # The event loop gets a turn every 64 kB (heartbeats must go on), as in any platform.
        started = time.perf_counter()
        if mode == "fd":
            for chunk in chunks:
                view = memoryview(chunk.encode())
                while view:
                    view = view[os.write(1, view) :]
                await asyncio.sleep(0)
        elif mode == "chunks":
            for chunk in chunks:
                sys.stdout.write(chunk)
                await asyncio.sleep(0)
        elif mode == "print":
            for n, line in enumerate(lines):
                print(line, end="")
                if n % CHATTER_CHUNK_LINES == 0:
                    await asyncio.sleep(0)
        elif mode == "log":
            for n, line in enumerate(lines):
                ctx.log.info(line[:-1])
                if n % CHATTER_CHUNK_LINES == 0:
                    await asyncio.sleep(0)
        else:
            raise ValueError(f"unknown mode {mode!r}")
        elapsed = time.perf_counter() - started
        result.write_text(json.dumps({"lines": total, "seconds": elapsed}))
        await asyncio.Event().wait()


def memory_now() -> dict[str, int]:
    """This process's resident memory, bytes: all of it, anonymous (the heap) and
    file-backed (mapped files such as the spool's live segment)."""
    fields = {"VmRSS": "rss", "RssAnon": "anon", "RssFile": "file"}
    found: dict[str, int] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in fields:
            found[fields[name]] = int(value.split()[0]) * 1024
    return found


class Hold:
    """Fills the account with ``per_round`` new messages per round, ``rounds`` times;
    before the first and after each round, once every change is acknowledged, appends
    this process's memory as a JSON line to ``result_file``. A later run of the account
    (a restarted worker, which knows the items from the store's digest) only measures."""

    async def run(self, ctx: PlatformContext) -> None:
        per_round = int(ctx.options["per_round"])
        rounds = int(ctx.options["rounds"])
        result = Path(ctx.options["result_file"])

        async def measure(stage: str) -> None:
            while ctx.pending():
                await asyncio.sleep(0.01)
            await asyncio.sleep(1.5)  # the regular flush passes; nothing is in flight
            gc.collect()
            line = {"stage": stage, "pid": os.getpid(), "held": ctx.count("message")}
            with result.open("a") as f:
                f.write(json.dumps(line | memory_now()) + "\n")

        n = ctx.count("message")
        if n >= per_round * rounds:
            await measure("loaded")
        else:
            await measure("empty")
            for round_ in range(1, rounds + 1):
                for _ in range(per_round):
                    ctx.upsert_message(_message(n, "h", f"message {n}, held in memory"))
                    n += 1
                    if n % 1000 == 0:
                        while ctx.pending() > 20_000:
                            await asyncio.sleep(0.005)
                        await asyncio.sleep(0)
                await measure(f"round {round_}")
        await asyncio.Event().wait()
