"""Platforms that send replies the way tests need them to: the demo's activity and
sending, with every call of ``send`` written down first, and options to make it slow or
make it fail.

Options (besides the demo's):

* ``record_dir``: each call of ``send`` appends a line to ``<record_dir>/<account>.sends``
  (JSON: request id, the action, the worker's pid) before anything else, so a test can
  count calls even of a send that never returns.
* ``send_delay_s``: sleep this long before sending (a send in flight, to stop a worker
  or revoke the account under).
* ``stop_delay_s``: when its task is stopped, take this long to end (an account that a
  reload's old process holds for a while after it was revoked).
* ``run_fails``: ``run`` raises at once, every time (the account is in backoff).
* ``send_fail``: ``"error"`` raises RuntimeError, ``"system_exit"`` raises SystemExit(3),
  ``"returns_int"`` returns 42 instead of an id.
"""

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from hiscrm.platforms.base import PlatformContext
from hiscrm.platforms.demo import DemoPlatform
from hiscrm.replies import ReplyAction


def record_send(ctx: PlatformContext, action: ReplyAction) -> None:
    record_dir = ctx.options.get("record_dir")
    if record_dir is None:
        return
    line = {
        "request_id": ctx.request_id,
        "action": action.model_dump(),
        "pid": os.getpid(),
        "node": os.environ.get("HISCRM_TEST_NODE"),  # which master's worker (clusters)
    }
    with (Path(record_dir) / f"{ctx.account.id}.sends").open("a") as f:
        f.write(json.dumps(line) + "\n")


def recorded_sends(record_dir: Path, account_id: str) -> list[dict[str, Any]]:
    path = record_dir / f"{account_id}.sends"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


class Sender(DemoPlatform):
    """The demo, recorded, with a slow or failing send on demand."""

    async def run(self, ctx: PlatformContext) -> None:
        if ctx.options.get("run_fails"):
            raise RuntimeError("run fails on purpose")
        try:
            await super().run(ctx)
        except asyncio.CancelledError:
            await asyncio.sleep(float(ctx.options.get("stop_delay_s", 0)))
            raise

    async def send(self, ctx: PlatformContext, action: ReplyAction) -> str | None:
        record_send(ctx, action)
        await asyncio.sleep(float(ctx.options.get("send_delay_s", 0)))
        fail = ctx.options.get("send_fail")
        if fail == "error":
            raise RuntimeError(f"send of {ctx.request_id} failed on purpose")
        if fail == "system_exit":
            raise SystemExit(3)
        if fail == "returns_int":
            return 42  # type: ignore[return-value]
        return await super().send(ctx, action)


class IdempotentSender(Sender):
    """``Sender`` whose sends may be repeated: the demo's ids come from the request id."""

    sends_idempotent = True


class NoSend:
    """The demo's activity, and no ``send`` at all."""

    async def run(self, ctx: PlatformContext) -> None:
        await DemoPlatform().run(ctx)


class SyncSend(NoSend):
    """A ``send`` that is not ``async def``."""

    def send(self, ctx: PlatformContext, action: ReplyAction) -> str:
        return "never"
