"""Every error caught in a worker goes through here: logged at error level with its
traceback, counted, and sent to the master as ``worker:error``.

``report`` never raises, whatever it is given: the exception is rendered by
``exception_text.render`` (bounded, valid Unicode, a note where something could not be
rendered), and if logging or sending fails all the same, that failure is written to the
worker's log file descriptor directly. A reporter that raised would end the task that
called it, which is how an account could die silently.
"""

import contextlib
import os
from collections.abc import Callable

from structlog.typing import FilteringBoundLogger

from hiscrm.protocol import WorkerError
from hiscrm.worker.exception_text import render, type_name

STDERR_FD = 2  # the worker's log file (see bootstrap)


class ErrorReporter:
    def __init__(self, send: Callable[[WorkerError], bool], log: FilteringBoundLogger) -> None:
        self._send = send
        self._log = log
        self.total = 0
        self.failures = 0  # reports that could not be logged or sent (they are on fd 2)

    def report(self, source: str, exc: BaseException, *, account_id: str | None = None) -> None:
        self.total += 1
        error = render(exc)
        self._log_error(
            error.line,
            "error",
            source=source,
            account_id=account_id,
            error=error.line,
            errors_total=self.total,
            exception=error.traceback,
        )
        try:
            sent = self._send(
                WorkerError(
                    source=source,
                    account_id=account_id,
                    error_type=error.type_name,
                    message=error.message,
                    traceback=error.traceback,
                    errors_total=self.total,
                )
            )
        except BaseException as failure:  # a failure to send must not end the caller's task
            self._last_resort(f"cannot send an error of {source}: {type_name(failure)}", error.line)
            return
        if not sent:
            self._log_error(
                error.line, "error not reported to the master: pipe closed", source=source
            )

    def _log_error(self, line: str, event: str, **fields: object) -> None:
        try:
            self._log.error(event, **fields)
        except BaseException as failure:  # nor a logging bug
            self._last_resort(f"cannot log {event!r}: {type_name(failure)}", line)

    def _last_resort(self, what: str, line: str) -> None:
        self.failures += 1
        text = f"error reporter: {what} (error: {line}; reporter failures: {self.failures})\n"
        with contextlib.suppress(OSError):  # no log file either: ``failures`` counts it
            os.write(STDERR_FD, text.encode("utf-8", "backslashreplace"))
