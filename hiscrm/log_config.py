"""structlog set-up for the two kinds of process.

* Master: every event goes to ``logs/master.log`` as one JSON line and to the console as
  a readable line (coloured only on a terminal).
* Worker: every event goes to ``logs/<worker>.log`` as one plain line, no colour codes.

Both send the standard library's ``logging`` (asyncio, platforms that use ``logging``)
through the same path, so nothing logs around it. In the master, repeated warnings and
errors are rate-limited (:mod:`hiscrm.log_rate_limit`): counted, never lost.
"""

import json
import logging
import sys
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

from hiscrm.log_rate_limit import RateLimiter
from hiscrm.logfile import RotatingLogFile

LEVEL = logging.INFO


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def _plain_renderer() -> structlog.dev.ConsoleRenderer:
    return structlog.dev.ConsoleRenderer(
        colors=False, exception_formatter=structlog.dev.plain_traceback, pad_level=False
    )


class _FileLogger:
    """Writes one rendered event (possibly several lines) with a single write. A failed
    write (disk full) is counted in ``sink.write_errors``, which the worker reports with
    every heartbeat; raising would turn a logging problem into a crash."""

    def __init__(self, sink: RotatingLogFile) -> None:
        self._sink = sink

    def msg(self, message: str) -> None:
        try:
            self._sink.write((message + "\n").encode("utf-8", "backslashreplace"))
        except OSError:
            self._sink.write_errors += 1

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


class _TeeLogger:
    """Master sink: the JSON line to master.log, the readable line to the console."""

    def __init__(self, sink: RotatingLogFile, console: TextIO) -> None:
        self._sink = sink
        self._console: TextIO | None = console

    def msg(self, console_line: str, json_line: str) -> None:
        try:
            self._sink.write((json_line + "\n").encode("utf-8", "backslashreplace"))
        except OSError as exc:  # disk full: the console still gets it, flagged
            self._sink.write_errors += 1
            console_line += f"  [master.log write failed ({exc}); {self._sink.write_errors} lost]"
        if self._console is None:
            return
        try:
            self._console.write(console_line + "\n")
            self._console.flush()
        except (OSError, ValueError) as exc:  # terminal closed; the file still has it all
            self._console = None
            note = {"event": "console output failed, logging to file only", "error": str(exc)}
            try:
                self._sink.write((json.dumps(note) + "\n").encode())
            except OSError:
                self._sink.write_errors += 1

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


class _TeeRenderer:
    """Renders each event twice: readable for the console, JSON for the file."""

    def __init__(self, colors: bool) -> None:
        self._console = structlog.dev.ConsoleRenderer(
            colors=colors, exception_formatter=structlog.dev.plain_traceback
        )
        self._exceptions = structlog.processors.ExceptionRenderer()
        self._json = structlog.processors.JSONRenderer()

    def __call__(
        self, logger: WrappedLogger, name: str, event_dict: EventDict
    ) -> tuple[tuple[str, str], dict[str, Any]]:
        json_line = self._json(logger, name, self._exceptions(logger, name, dict(event_dict)))
        console_dict = dict(event_dict)
        tail = console_dict.pop("log_tail", None)
        console_line = self._console(logger, name, console_dict)
        if tail and name in ("warning", "error", "critical"):  # the file always has it
            console_line += "".join(f"\n    | {line}" for line in tail)
        return (console_line, str(json_line)), {}


class _StdlibBridge(logging.Handler):
    """Hands ``logging`` records to structlog so they are rendered like everything else."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            logger: FilteringBoundLogger = structlog.get_logger()
            extra: dict[str, Any] = {"logger": record.name}
            if record.exc_info:
                extra["exc_info"] = record.exc_info
            logger.log(record.levelno, record.getMessage(), **extra)
        except Exception:  # a broken format string in someone's log call
            self.handleError(record)


def _bridge_stdlib_logging() -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(_StdlibBridge())
    root.setLevel(LEVEL)
    logging.captureWarnings(True)


def configure_worker_logging(sink: RotatingLogFile) -> None:
    file_logger = _FileLogger(sink)
    structlog.configure(
        processors=[*_shared_processors(), _plain_renderer()],
        wrapper_class=structlog.make_filtering_bound_logger(LEVEL),
        logger_factory=lambda *args: file_logger,
        cache_logger_on_first_use=True,
    )
    _bridge_stdlib_logging()


QUIET_LOGGERS = (
    "uvicorn.error",  # start/stop chatter the master logs in its own words
    "watchfiles",  # "N changes detected" for every write to a followed log
)
_master_rate_limit = RateLimiter()


def configure_master_logging(sink: RotatingLogFile, console: TextIO = sys.stderr) -> None:
    tee = _TeeLogger(sink, console)
    structlog.configure(
        processors=[
            *_shared_processors(),
            _master_rate_limit,
            _TeeRenderer(colors=console.isatty()),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVEL),
        logger_factory=lambda *args: tee,
        cache_logger_on_first_use=True,
    )
    _bridge_stdlib_logging()
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def log_lines_suppressed_total() -> int:
    """Master log lines left out by the rate limit so far (each also counted in a line
    saying how many were left out)."""
    return _master_rate_limit.suppressed_total


def flush_suppressed_counts() -> None:
    """Write the pending "N more like this suppressed" lines now (at shutdown)."""
    _master_rate_limit.flush()


def get_logger(**bound: Any) -> FilteringBoundLogger:
    logger: FilteringBoundLogger = structlog.get_logger()
    return logger.bind(**bound) if bound else logger
