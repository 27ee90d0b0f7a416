"""One small platform per misbehaviour. Options say where to leave evidence for the test."""

import asyncio
import faulthandler
import gc
import json
import logging
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from hiscrm.channel import Channel, frame
from hiscrm.platforms.base import PlatformContext


async def forever() -> None:
    await asyncio.Event().wait()


class Idle:
    async def run(self, ctx: PlatformContext) -> None:
        await forever()


class Introspect:
    """Writes down what the worker process holds: its fds, random state, signal handlers,
    logging handlers, parent and session, to ``<out_dir>/<account>.json``."""

    async def run(self, ctx: PlatformContext) -> None:
        fds = {}
        for name in os.listdir("/proc/self/fd"):
            try:
                fds[name] = os.readlink(f"/proc/self/fd/{name}")
            except OSError:
                continue
        report = {
            "pid": os.getpid(),
            "ppid": os.getppid(),
            "pgid": os.getpgrp(),
            "sid": os.getsid(0),
            "fds": fds,
            "random": random.random(),
            "sigterm": repr(signal.getsignal(signal.SIGTERM)),
            "sighup": repr(signal.getsignal(signal.SIGHUP)),
            "logging_handlers": [type(h).__name__ for h in logging.getLogger().handlers],
            "process_name": multiprocessing.current_process().name,
        }
        out = Path(ctx.options["out_dir"]) / f"{ctx.account.id}.json"
        out.write_text(json.dumps(report))
        await forever()


class SlowToStop:
    """Takes ``stop_delay_s`` to finish after it is cancelled (a platform closing a browser)."""

    async def run(self, ctx: PlatformContext) -> None:
        try:
            await forever()
        except asyncio.CancelledError:
            await asyncio.sleep(float(ctx.options.get("stop_delay_s", 0.4)))
            raise


class BlockLoopOnce:
    """Blocks the worker's event loop with time.sleep the first time it runs."""

    async def run(self, ctx: PlatformContext) -> None:
        marker = Path(ctx.options["marker"])
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            ctx.log.info("blocking the event loop")
            time.sleep(1000)
        await forever()


class SpawnGrandchild:
    """Starts `sleep 1000` and records its pid; the worker must not leave it behind."""

    async def run(self, ctx: PlatformContext) -> None:
        child = subprocess.Popen(["sleep", "1000"])
        with open(ctx.options["pid_file"], "a") as f:
            f.write(f"{child.pid}\n")
        ctx.log.info("started grandchild", grandchild_pid=child.pid)
        await forever()


class GrandchildThenBlock:
    """Starts `sleep 1000`, then blocks the event loop for good: only a signal handler
    that runs outside the loop can take this worker and its child down."""

    async def run(self, ctx: PlatformContext) -> None:
        child = subprocess.Popen(["sleep", "1000"])
        with open(ctx.options["pid_file"], "a") as f:
            f.write(f"{child.pid}\n")
        await asyncio.sleep(0.3)  # let a heartbeat or two go out
        time.sleep(1000)


ESCAPE = r"""
import os, sys, time
mode, pid_file = sys.argv[1], sys.argv[2]
if mode == "setsid":  # a child in a session of its own
    os.setsid()
elif mode == "setpgid":  # a child in a process group of its own
    os.setpgid(0, 0)
elif mode == "daemon":  # the classic daemon: fork, the parent exits, the orphan setsid()s
    if os.fork():
        os._exit(0)
    os.setsid()
with open(pid_file, "a") as f:
    f.write(f"{os.getpid()}\n")
time.sleep(1000)
"""


class EscapingChild:
    """Starts a process that leaves the worker's process group (option ``mode``: "setsid",
    "setpgid" or "daemon") and records its pid in ``pid_file``. With ``blocked_file`` it
    then writes that file and blocks the worker's event loop for good."""

    async def run(self, ctx: PlatformContext) -> None:
        pid_file = Path(ctx.options["pid_file"])
        before = pid_file.read_text().count("\n") if pid_file.exists() else 0
        mode = str(ctx.options.get("mode", "setsid"))
        self.child = subprocess.Popen([sys.executable, "-c", ESCAPE, mode, str(pid_file)])
        ctx.log.info("started an escaping child", mode=mode, child_pid=self.child.pid)
        if ctx.options.get("blocked_file"):
            while not pid_file.exists() or pid_file.read_text().count("\n") == before:
                await asyncio.sleep(0.01)
            Path(ctx.options["blocked_file"]).write_text("blocking the loop now")
            time.sleep(1000)
        await forever()


class BadText:
    """Upserts a message whose text holds a lone surrogate (and catches the refusal, as a
    platform may), then a good one. With ``fail``, then raises an error whose message
    holds a lone surrogate too."""

    async def run(self, ctx: PlatformContext) -> None:
        fields = {"conversation_id": "c1", "direction": "inbound", "sender_id": "u1"}
        fields["sent_at"] = 1_763_848_020_000
        try:
            ctx.upsert_message({**fields, "id": "bad", "text": "broken \ud800 text"})
        except ValueError:  # InvalidItem, already reported
            ctx.log.info("the bad item was refused")
        ctx.upsert_message({**fields, "id": "good", "text": "fine"})
        if ctx.options.get("fail"):
            await asyncio.sleep(0.05)
            raise ValueError("an error about \udcff")
        await forever()


class StarveFds:
    """Leaves the worker no free file descriptor (a lowered soft RLIMIT_NOFILE, every fd
    below it taken), prints ``lines`` numbered lines (past the log's size limit: a rotation
    must open a new file, and cannot), waits ``starve_s`` (heartbeats go by), then frees
    the fds and prints ``lines`` more; writes ``done_file``."""

    async def run(self, ctx: PlatformContext) -> None:
        import resource

        done = Path(ctx.options["done_file"])
        if done.exists():
            await forever()
        lines = int(ctx.options["lines"])
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, hard))
        held = []
        try:
            while True:
                held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            pass
        try:
            for n in range(lines):
                print(f"starved {n:05d} " + "." * 80)
            await asyncio.sleep(float(ctx.options.get("starve_s", 1.0)))
        finally:
            for fd in held:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for n in range(lines):
            print(f"fed {n:05d} " + "." * 80)
        done.write_text("done")
        await forever()


class Ticker:
    """Prints "tick N" every ``interval_s``, numbered on across restarts of the platform."""

    async def run(self, ctx: PlatformContext) -> None:
        interval = float(ctx.options.get("interval_s", 0.005))
        n = 0
        while True:
            print(f"tick {n:07d} " + "." * 60)
            n += 1
            await asyncio.sleep(interval)


class WriteEverywhere:
    """Writes through every channel a worker has, then optionally segfaults."""

    async def run(self, ctx: PlatformContext) -> None:
        os.write(2, b"raw write to fd 2\n")
        os.write(1, b"raw write to fd 1\n")
        print("plain print to stdout")
        print("print to stderr", file=sys.stderr)
        sys.stdout.buffer.write(b"bytes to stdout.buffer\n")
        print("\x1b[31mred text\x1b[0m without colour codes")
        logging.getLogger("some.library").warning("stdlib logging warning")
        ctx.log.info("structlog line", detail="x")
        if ctx.options.get("crash"):
            await asyncio.sleep(0.2)
            faulthandler._sigsegv()
        await forever()


class SpamLines:
    """Writes numbered lines from several threads and both fds, as fast as it can."""

    async def run(self, ctx: PlatformContext) -> None:
        count = int(ctx.options["lines"])
        done = Path(ctx.options["done_file"])
        if done.exists():
            await forever()
        filler = "x" * int(ctx.options.get("width", 60))

        def spam(name: str, use_fd: bool) -> None:
            for i in range(count):
                line = f"LINE {name} {i:07d} {filler} END\n"
                if use_fd:
                    os.write(1, line.encode())
                else:
                    print(line, end="")

        threads = [threading.Thread(target=spam, args=(f"t{n}", n == 0)) for n in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        done.write_text("done")
        await forever()


class SendGarbage:
    """Writes bad frames onto the worker's own pipe to the master."""

    async def run(self, ctx: PlatformContext) -> None:
        done = Path(ctx.options["done_file"])
        if done.exists():
            await forever()
        fd = _pipe_fd()
        envelope: dict[str, Any] = {"protocol": 1, "id": 1, "sent_at": int(time.time() * 1000)}
        frames = [
            b"\xff\xfe this is not json",
            json.dumps({**envelope, "body": {"type": "worker:bogus"}}).encode(),
            json.dumps(
                {**envelope, "protocol": 99, "body": {"type": "worker:goodbye", "reason": "x"}}
            ).encode(),
            json.dumps({**envelope, "body": {"type": "worker:heartbeat", "seq": "many"}}).encode(),
        ]
        for payload in frames:
            os.write(fd, frame(payload))
        if ctx.options.get("break_framing"):
            await asyncio.sleep(0.5)
            os.write(fd, b"\xff\xff\xff\xf0garbage header")
        done.write_text("done")
        await forever()


class ForgeSyncs:
    """Writes syncs whose sequence ranges lie about their changes onto the worker's own
    pipe (once), then produces messages like a well-behaved platform. With option
    ``items``, the forged syncs have honest ranges and items the master must refuse."""

    async def run(self, ctx: PlatformContext) -> None:
        done = Path(ctx.options["done_file"])
        if not done.exists():
            fd = _pipe_fd()
            envelope = {"protocol": 1, "id": 1, "sent_at": int(time.time() * 1000)}
            lies: list[dict[str, Any]] = [
                {"base_seq": 0, "last_seq": 2**63 - 1, "changes": []},
                {"base_seq": 0, "last_seq": 10**12, "changes": []},
                {"base_seq": 5, "last_seq": 3, "changes": []},
            ]
            if ctx.options.get("items"):
                now = int(time.time() * 1000)
                good = {
                    "kind": "message",
                    "id": "forged",
                    "conversation_id": "c",
                    "direction": "inbound",
                    "sender_id": "u",
                    "text": "forged",
                    "sent_at": now,
                }
                bad_items = [
                    {**good, "is_read": True},  # a field the master owns
                    {**good, "id": "a/b"},
                    {**good, "sent_at": now // 1000},  # seconds
                ]
                lies = [
                    {
                        "base_seq": 0,
                        "last_seq": 2,
                        "changes": [
                            {"seq": 1, "version": 1, "hash": "00", "item": good},
                            {"seq": 2, "version": 1, "hash": "00", "item": bad},
                        ],
                    }
                    for bad in bad_items
                ]
            for lie in lies:
                body = {"type": "worker:data:sync", "account_id": ctx.account.id, **lie}
                os.write(fd, frame(json.dumps({**envelope, "body": body}).encode()))
            done.write_text("done")
        n = ctx.count("message")
        while True:
            ctx.upsert_message(
                {
                    "id": f"m{n}",
                    "conversation_id": "c",
                    "direction": "inbound",
                    "sender_id": "u",
                    "text": f"after the lies {n}",
                    "sent_at": int(time.time() * 1000),
                }
            )
            n += 1
            await asyncio.sleep(0.05)


def _pipe_fd() -> int:
    """The fd of this worker's channel to the master (asyncio has sockets of its own)."""
    channels = [o for o in gc.get_objects() if isinstance(o, Channel) and o.is_open]
    if len(channels) != 1:
        raise RuntimeError(f"expected one open channel in this worker, found {len(channels)}")
    sock = channels[0]._transport.get_extra_info("socket")
    return int(sock.fileno())


class RaiseSoon:
    """Raises in run(), and from a thread, so the error paths can be checked."""

    async def run(self, ctx: PlatformContext) -> None:
        await asyncio.sleep(float(ctx.options.get("after_s", 0.2)))
        if ctx.options.get("thread"):
            threading.Thread(target=_raise_in_thread, name="helper").start()
        raise ValueError(f"platform failure for {ctx.account.id}")


def _raise_in_thread() -> None:
    raise KeyError("raised in a helper thread")


class BigItems:
    """Upserts ``count`` messages of ``size`` characters each, then stays quiet."""

    async def run(self, ctx: PlatformContext) -> None:
        size, count = int(ctx.options["size"]), int(ctx.options["count"])
        for n in range(ctx.count("message"), count):
            ctx.upsert_message(
                {
                    "id": f"big-{n:04d}",
                    "conversation_id": "c",
                    "direction": "inbound",
                    "sender_id": "u",
                    "text": f"{n:04d}" + "x" * size,
                    "sent_at": 1_763_848_020_000 + n,
                }
            )
            await asyncio.sleep(0)
        while True:
            ctx.progress()
            await asyncio.sleep(1.0)


class Busy:
    """Keeps its worker's CPU busy in short slices (its loop still beats)."""

    async def run(self, ctx: PlatformContext) -> None:
        while True:
            began = time.monotonic()
            while time.monotonic() - began < 0.02:
                pass
            ctx.progress()
            await asyncio.sleep(0.005)


class ExitSoon:
    """Kills its whole worker process ``after_s`` after it starts (``os._exit``), as a
    platform whose native code crashes or that exits by mistake would."""

    async def run(self, ctx: PlatformContext) -> None:
        await asyncio.sleep(float(ctx.options.get("after_s", 1.0)))
        os._exit(int(ctx.options.get("code", 3)))


class Hog:
    """Allocates ``step_mb`` more memory every ``every_s`` up to ``max_mb``, then holds it
    (a leak, or a page that eats memory)."""

    async def run(self, ctx: PlatformContext) -> None:
        held: list[bytearray] = []
        step = int(ctx.options.get("step_mb", 40)) * 2**20
        limit = int(ctx.options.get("max_mb", 400)) * 2**20
        while True:
            if len(held) * step < limit:
                held.append(bytearray(b"x" * step))  # touched: resident, not just reserved
            ctx.progress()
            await asyncio.sleep(float(ctx.options.get("every_s", 0.1)))


HOG_CHILD = r"""
import os, sys, time
step, top, every = int(sys.argv[1]) * 2**20, int(sys.argv[2]) * 2**20, float(sys.argv[3])
parent = os.getppid()
held = []
while os.getppid() == parent:  # its worker gone: go too
    if len(held) * step < top:
        held.append(bytearray(step))
        held[-1][::4096] = b"x" * (step // 4096)  # touch every page: resident
    time.sleep(every)
"""


class ChildHog:
    """Starts a child process that allocates ``step_mb`` more every ``every_s`` up to
    ``max_mb`` (a browser or converter the platform runs); records its pid in
    ``pid_file``. The worker itself stays small."""

    async def run(self, ctx: PlatformContext) -> None:
        options = ctx.options
        args = [str(options.get(k, d)) for k, d in (("step_mb", 20), ("max_mb", 300))]
        args.append(str(options.get("every_s", 0.2)))
        child = subprocess.Popen([sys.executable, "-c", HOG_CHILD, *args])
        with open(options["pid_file"], "a") as f:
            f.write(f"{child.pid}\n")
        ctx.log.info("started a child that eats memory", child_pid=child.pid)
        await forever()
