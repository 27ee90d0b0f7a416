"""One platform that commits one fault of docs/FAULTS.md when it starts, for the tests
of that table and for ``bench/faults.py``.

Options:

* ``fault``: ``raise`` (its task raises), ``block`` (blocks the worker's event loop),
  ``segfault``, ``exit`` (``os._exit(3)``: the whole worker dies), ``break_sync`` (every
  sync the worker encodes from then on raises, as the original's wrongly exported
  constant did), ``big_item`` (upserts a message over the item size limit), ``big_frame``
  (writes a frame announcing 2 MiB onto the worker's pipe), ``hog`` (allocates memory,
  ``step_mb`` every ``every_s`` up to ``max_mb``, and holds it);
* ``once_marker``: a path; the fault happens only if it does not exist (it is made
  first), so a restarted account runs normally;
* ``fault_file``: a path; the moment of the first fault (``time.monotonic()``, the same
  clock in every process) is written there, just before it (for ``hog``: when its
  resident memory passes ``limit_mb``);
* ``delay_s``: wait this long before the fault (default 0.05).

Without a fault (or after one it survives), it upserts a message every ``every_s``
(default 0.05), numbered on from what the account has.
"""

import asyncio
import faulthandler
import os
import time
from pathlib import Path
from typing import Any

from hiscrm.channel import HEADER
from hiscrm.platforms.base import PlatformContext
from testplatforms.behaviours import _pipe_fd

PAGE = os.sysconf("SC_PAGE_SIZE")


class Fault:
    async def run(self, ctx: PlatformContext) -> None:
        options = ctx.options
        fault = str(options.get("fault", ""))
        marker = options.get("once_marker")
        if marker is not None:
            if Path(marker).exists():
                fault = ""
            else:
                Path(marker).write_text(fault)
        await asyncio.sleep(float(options.get("delay_s", 0.05)))
        if fault == "hog":
            await _hog(ctx)
        elif fault:
            _note(options)
            _commit(fault, ctx)
        await _work(ctx)


def _note(options: dict[str, Any]) -> None:
    path = options.get("fault_file")
    if path is not None and not Path(path).exists():
        Path(path).write_text(repr(time.monotonic()))


def _commit(fault: str, ctx: PlatformContext) -> None:
    match fault:
        case "raise":
            raise ValueError(f"a fault in the task of {ctx.account.id}")
        case "block":
            time.sleep(1000)
        case "segfault":
            faulthandler._sigsegv()
        case "exit":
            os._exit(3)
        case "break_sync":
            _break_sync()
        case "big_item":
            ctx.upsert_message(_message(0, "x" * 300_000))
        case "big_frame":
            os.write(_pipe_fd(), HEADER.pack(2 * 2**20) + b"x" * 1024)
        case _:
            raise ValueError(f"no fault {fault!r}")


def _break_sync() -> None:
    from hiscrm import protocol

    def broken(*args: object, **kwargs: object) -> bytes:
        raise TypeError("'NoneType' object is not subscriptable (a broken sync path)")

    protocol.Encoder.encode_sync = broken  # type: ignore[method-assign]


async def _hog(ctx: PlatformContext) -> None:
    options = ctx.options
    step = int(options.get("step_mb", 20)) * 2**20
    top = int(options.get("max_mb", 300)) * 2**20
    limit = int(options.get("limit_mb", 0)) * 2**20
    held: list[bytearray] = []
    while True:
        if len(held) * step < top:
            held.append(bytearray(b"x" * step))  # touched: resident, not just reserved
        if limit and _rss() > limit:
            _note(options)
        ctx.progress()
        await asyncio.sleep(float(options.get("every_s", 0.05)))


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


async def _work(ctx: PlatformContext) -> None:
    n = ctx.count("message")
    while True:
        ctx.upsert_message(_message(n, f"message {n}"))
        n += 1
        await asyncio.sleep(float(ctx.options.get("every_s", 0.05)))


def _message(n: int, text: str) -> dict[str, Any]:
    return {
        "id": f"m{n:05d}",
        "conversation_id": "c",
        "direction": "inbound",
        "sender_id": "u",
        "text": text,
        "sent_at": 1_763_848_020_000 + n,
    }
