"""Every error caught in a worker goes through here: logged at error level with its
traceback, counted, and sent to the master as ``worker:error``."""

import traceback
from collections.abc import Callable

from structlog.typing import FilteringBoundLogger

from hiscrm.protocol import WorkerError
from hiscrm.worker.exception_text import describe_exception, exception_message, unicode_safe

_MAX_TRACEBACK_CHARS = 16_000
_MAX_MESSAGE_CHARS = 2_000


class ErrorReporter:
    def __init__(self, send: Callable[[WorkerError], bool], log: FilteringBoundLogger) -> None:
        self._send = send
        self._log = log
        self.total = 0

    def report(self, source: str, exc: BaseException, *, account_id: str | None = None) -> None:
        self.total += 1
        self._log.error(
            "error",
            source=source,
            account_id=account_id,
            error=describe_exception(exc),
            errors_total=self.total,
            exc_info=exc,
        )
        text = unicode_safe("".join(traceback.format_exception(exc)))
        sent = self._send(
            WorkerError(
                source=source,
                account_id=account_id,
                error_type=type(exc).__name__,
                message=exception_message(exc)[:_MAX_MESSAGE_CHARS],
                traceback=text[-_MAX_TRACEBACK_CHARS:],
                errors_total=self.total,
            )
        )
        if not sent:
            self._log.error("error not reported to the master: pipe closed", source=source)
