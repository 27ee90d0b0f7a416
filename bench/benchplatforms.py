"""Platforms that load the system for the benchmarks (importable via PYTHONPATH=bench)."""

import asyncio
import gc
import json
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


def _syncer() -> Syncer:
    found = [o for o in gc.get_objects() if isinstance(o, Syncer)]
    assert len(found) == 1, f"expected one Syncer in this worker, found {len(found)}"
    return found[0]


class OneChange:
    """Fills the account with ``items`` messages, waits until all are acknowledged, then
    changes one of them and writes down how many bytes its sync took on the pipe."""

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
        bytes_before = syncer.bytes_by_account.get(ctx.account.id, 0)
        ctx.upsert_message(_message(7, "b", "message 7, edited"))
        while ctx.pending():
            await asyncio.sleep(0.01)
        result.write_text(
            json.dumps(
                {
                    "items": items,
                    "bytes": syncer.bytes_by_account[ctx.account.id] - bytes_before,
                    "fill_s": round(filled_s, 2),
                }
            )
        )
        await asyncio.Event().wait()
