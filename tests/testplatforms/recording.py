"""Platforms that write down every upsert after it returned, so tests can compare what a
worker produced with what reached the store."""

import asyncio
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hiscrm.platforms.base import PlatformContext
from hiscrm.platforms.demo import DemoPlatform

KINDS = ("conversation", "message", "comment", "content", "notification")


class _Recorder:
    """Wraps a ctx: every upsert goes through, then is appended to a file."""

    def __init__(self, ctx: PlatformContext, path: Path) -> None:
        self._ctx = ctx
        self._file = path.open("a")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("upsert_") and name.removeprefix("upsert_") in KINDS:
            kind = name.removeprefix("upsert_")
            upsert = getattr(self._ctx, name)

            def recorded(item: Mapping[str, Any]) -> bool:
                changed = upsert(item)
                self._file.write(
                    json.dumps({"kind": kind, "item": dict(item), "changed": changed}) + "\n"
                )
                self._file.flush()
                return bool(changed)

            return recorded
        return getattr(self._ctx, name)


def record_path(ctx: PlatformContext) -> Path:
    return Path(ctx.options["record_dir"]) / f"{ctx.account.id}.jsonl"


class RecordingDemo:
    """The built-in demo generator, recorded."""

    async def run(self, ctx: PlatformContext) -> None:
        await DemoPlatform().run(_Recorder(ctx, record_path(ctx)))  # type: ignore[arg-type]


class Stream:
    """New inbound messages, ``per_tick`` every 10 ms, numbered on from what the account
    has; each recorded once its upsert returned."""

    async def run(self, ctx: PlatformContext) -> None:
        recorder = _Recorder(ctx, record_path(ctx))
        per_tick = int(ctx.options.get("per_tick", 5))
        n = ctx.count("message")
        while True:
            for _ in range(per_tick):
                recorder.upsert_message(
                    {
                        "id": f"m{n:07d}",
                        "conversation_id": "c1",
                        "direction": "inbound",
                        "sender_id": "u1",
                        "text": f"message number {n}",
                        "sent_at": 1_763_848_020_000 + n,
                    }
                )
                n += 1
            await asyncio.sleep(0.01)


class UpdateOnSignal:
    """Upserts one message, then rewrites its text each time a new signal file appears."""

    async def run(self, ctx: PlatformContext) -> None:
        signals = Path(ctx.options["signal_dir"])
        version = 0
        while True:
            present = len(list(signals.glob("update-*")))
            if present >= version:
                version = present + 1
                ctx.upsert_message(
                    {
                        "id": "m1",
                        "conversation_id": "c1",
                        "direction": "inbound",
                        "sender_id": "u1",
                        "text": f"text {version}",
                        "sent_at": 1_763_848_020_000,
                    }
                )
            await asyncio.sleep(0.02)


class Burst:
    """Upserts ``count`` messages at once (well over 1 MB), then stays quiet."""

    async def run(self, ctx: PlatformContext) -> None:
        if ctx.count("message") == 0:
            for n in range(int(ctx.options["count"])):
                ctx.upsert_message(
                    {
                        "id": f"b{n:05d}",
                        "conversation_id": "c1",
                        "direction": "inbound",
                        "sender_id": "u1",
                        "text": f"{n} " + "x" * 300,
                        "sent_at": 1_763_848_020_000 + n,
                    }
                )
        await asyncio.Event().wait()


class InvalidItems:
    """Upserts a message whose time is in seconds, as the original's comments were."""

    async def run(self, ctx: PlatformContext) -> None:
        await asyncio.sleep(0.1)
        ctx.upsert_message(
            {
                "id": "bad-time",
                "conversation_id": "c1",
                "direction": "inbound",
                "sender_id": "u1",
                "text": "sent at a time in seconds",
                "sent_at": 1_763_848_020,
            }
        )


class Starts:
    """``Stream``, and a line in ``<record_dir>/<account>.starts`` (pid and options) each
    time its task starts: which tasks restarted, with which options."""

    async def run(self, ctx: PlatformContext) -> None:
        started = Path(ctx.options["record_dir"]) / f"{ctx.account.id}.starts"
        with started.open("a") as f:
            f.write(json.dumps({"pid": os.getpid(), "options": dict(ctx.options)}) + "\n")
        await Stream().run(ctx)
