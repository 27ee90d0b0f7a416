"""Repeated warnings and errors, rate-limited: a flood becomes a few lines and a count.

A structlog processor of the master's logging. Lines of one *kind* (same level, event,
logger, exception type and the place it was raised, and worker or account) may be
written ``burst`` times per ``window_s`` seconds; beyond that they are counted instead of
written, and when the window ends one line says how many were left out
(:data:`SUMMARY_EVENT`, fields ``like`` and ``suppressed``). ``suppressed_total`` counts
them all, for a metric. Info and debug lines pass untouched: they are state changes, not
repeated errors.
"""

import logging
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import msgspec
import structlog
from structlog.typing import EventDict, WrappedLogger

SUMMARY_EVENT = "repeated log lines suppressed"
# What tells two kinds apart: the same error of another worker, account, hook or node is
# news, never hidden behind the first one's repeats.
KEY_FIELDS = ("logger", "message", "worker", "account", "account_id", "hook", "node")
MAX_KINDS = 10_000  # windows remembered at once; expired ones are dropped beyond this

Emit = Callable[[str, dict[str, Any]], None]
Schedule = Callable[[float, Callable[[], None]], None]


class _Window(msgspec.Struct):
    ends: float
    level: str
    event: str
    logged: int = 0
    suppressed: int = 0


def _emit_summary(level: str, fields: dict[str, Any]) -> None:
    logger = structlog.get_logger()
    levelno = logging.getLevelNamesMapping().get(level.upper(), logging.ERROR)
    logger.log(levelno, SUMMARY_EVENT, **fields)


def _schedule_timer(delay: float, action: Callable[[], None]) -> None:
    timer = threading.Timer(delay, action)
    timer.daemon = True
    timer.start()


def _exception_place(exc_info: Any) -> tuple[str, str, int] | None:
    """An exception as its type and the innermost frame that raised it."""
    exc = exc_info[1] if isinstance(exc_info, tuple) else exc_info
    if not isinstance(exc, BaseException):
        return None
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    where = (frames[-1].filename, frames[-1].lineno or 0) if frames else ("", 0)
    return type(exc).__qualname__, *where


class RateLimiter:
    """The processor; ``emit`` writes a summary line, ``schedule`` runs one later
    (both replaceable in tests, as is the clock)."""

    def __init__(
        self,
        burst: int = 10,
        window_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        emit: Emit = _emit_summary,
        schedule: Schedule = _schedule_timer,
    ) -> None:
        self.burst = burst
        self.window_s = window_s
        self.suppressed_total = 0
        self._clock = clock
        self._emit = emit
        self._schedule = schedule
        self._windows: dict[tuple[Any, ...], _Window] = {}
        self._lock = threading.Lock()

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        level = str(event_dict.get("level", method_name))
        event = str(event_dict.get("event", ""))
        if logging.getLevelNamesMapping().get(level.upper(), 0) < logging.WARNING:
            return event_dict
        if event == SUMMARY_EVENT:
            return event_dict
        key = (
            level,
            event,
            *(event_dict.get(name) for name in KEY_FIELDS),
            _exception_place(event_dict.get("exc_info")),
        )
        now = self._clock()
        with self._lock:
            window = self._windows.get(key)
            ended = window if window is not None and now >= window.ends else None
            if window is None or ended is not None:
                if len(self._windows) >= MAX_KINDS:
                    self._forget_expired(now)
                window = self._windows[key] = _Window(now + self.window_s, level, event)
            if window.logged < self.burst:
                window.logged += 1
                allowed = True
            else:
                window.suppressed += 1
                self.suppressed_total += 1
                allowed = False
                if window.suppressed == 1:  # the first left out: say so when the window ends
                    self._schedule(window.ends - now, lambda: self._flush(key, window))
        if ended is not None:
            self._summarise(ended)
        if not allowed:
            raise structlog.DropEvent
        return event_dict

    def flush(self) -> None:
        """Write every pending count now (at shutdown)."""
        with self._lock:
            pending = [w for w in self._windows.values() if w.suppressed]
            self._windows.clear()
        for window in pending:
            self._summarise(window)

    def _flush(self, key: tuple[Any, ...], window: _Window) -> None:
        with self._lock:
            if self._windows.get(key) is not window:
                return  # already summarised by a later line of its kind, or by flush()
            del self._windows[key]
        self._summarise(window)

    def _summarise(self, window: _Window) -> None:
        if window.suppressed:
            self._emit(
                window.level,
                {
                    "like": window.event,
                    "suppressed": window.suppressed,
                    "window_s": self.window_s,
                    "suppressed_total": self.suppressed_total,
                },
            )
            window.suppressed = 0

    def _forget_expired(self, now: float) -> None:
        for key, window in list(self._windows.items()):
            if now >= window.ends and not window.suppressed:
                del self._windows[key]
