"""Platforms that fail in every way a platform can: each must stay inside its account."""

import asyncio
from typing import Any

from hiscrm.platforms.base import PlatformContext
from hiscrm.worker.error_reporter import ErrorReporter


class StrRaises(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken")


class ReprRaises(Exception):
    def __repr__(self) -> str:
        raise RuntimeError("__repr__ is broken")


class StrAndReprRaise(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken")

    def __repr__(self) -> str:
        raise RuntimeError("__repr__ is broken")


class StrRaisesSystemExit(Exception):
    """Its ``str()`` raises SystemExit: inside a reporter that calls ``str()``, that
    escaped the reporter and ended the account's task (or the worker)."""

    def __str__(self) -> str:
        raise SystemExit(9)


class BrokenNotes(Exception):
    """``traceback.format_exception`` raises on it: its notes cannot be read."""

    @property
    def __notes__(self) -> list[str]:
        raise RuntimeError("__notes__ is broken")


HUGE = 5 * 1024 * 1024


def make(kind: str) -> BaseException:
    """The exception a ``Raise`` account raises."""
    match kind:
        case "system_exit":
            return SystemExit(3)
        case "keyboard_interrupt":
            return KeyboardInterrupt()
        case "generator_exit":
            return GeneratorExit()
        case "str_raises":
            return StrRaises()
        case "repr_raises":
            return ReprRaises("plain text")
        case "str_and_repr_raise":
            return StrAndReprRaise()
        case "str_raises_system_exit":
            return StrRaisesSystemExit()
        case "broken_notes":
            return BrokenNotes("its notes cannot be read")
        case "huge_message":
            return ValueError("huge " + "x" * HUGE)
        case "group":
            return BaseExceptionGroup(
                "several at once",
                [
                    ValueError("one"),
                    KeyboardInterrupt(),
                    StrRaises(),
                    ExceptionGroup("nested", [TypeError("two")]),
                ],
            )
    raise ValueError(f"unknown kind {kind!r}")


class Raise:
    """Raises ``make(options["kind"])`` from ``run`` after ``after_s``, each time it runs."""

    async def run(self, ctx: PlatformContext) -> None:
        await asyncio.sleep(float(ctx.options.get("after_s", 0.3)))
        raise make(str(ctx.options["kind"]))


class ReporterBreaks:
    """Raises an exception whose ``str()`` raises, with the worker's error reporter made
    to fail on it once: the account's supervising task dies inside the reporter (before
    the reporter was made safe, a ``str()`` that raised there did this), and must not be
    left ``running``."""

    async def run(self, ctx: PlatformContext) -> None:
        await asyncio.sleep(float(ctx.options.get("after_s", 0.3)))
        original = ErrorReporter.report

        def broken(self: ErrorReporter, *args: Any, **kwargs: Any) -> None:
            ErrorReporter.report = original  # type: ignore[method-assign]  # once
            raise RuntimeError("the error reporter is broken")

        ErrorReporter.report = broken  # type: ignore[method-assign]
        raise StrRaises()


async def _exit_from_a_task() -> None:
    raise SystemExit(4)


class TaskRaisesSystemExit:
    """Starts a task of its own that raises SystemExit (asyncio lets that out of the event
    loop), then runs quietly."""

    async def run(self, ctx: PlatformContext) -> None:
        self.task = asyncio.get_running_loop().create_task(_exit_from_a_task())
        while True:
            ctx.progress()
            await asyncio.sleep(0.5)


class BrokenInit:
    """Its constructor raises: its accounts are failed, not restarted."""

    def __init__(self) -> None:
        raise RuntimeError("BrokenInit cannot be constructed")

    async def run(self, ctx: PlatformContext) -> None:
        raise AssertionError("never runs")


class NoRun:
    """A class without ``async def run``."""

    def run(self, ctx: Any) -> None:
        raise AssertionError("never runs")
