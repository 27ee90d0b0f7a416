"""The error reporter cannot fail, whatever it is given, and what it logs and sends is
bounded in size and valid Unicode; what could not be rendered says so."""

import pytest
import structlog
from test_platform_data import Sent
from testplatforms.failing import HUGE, make

from hiscrm.protocol import WorkerError
from hiscrm.worker.error_reporter import ErrorReporter
from hiscrm.worker.exception_text import (
    MAX_LINE_CHARS,
    MAX_MESSAGE_CHARS,
    MAX_TRACEBACK_CHARS,
    describe_exception,
    format_traceback,
)

KINDS = [
    "system_exit",
    "keyboard_interrupt",
    "generator_exit",
    "str_raises",
    "repr_raises",
    "str_and_repr_raise",
    "str_raises_system_exit",
    "broken_notes",
    "huge_message",
    "group",
]


def raised(exc: BaseException) -> BaseException:
    """``exc`` with a traceback, as the reporter gets it."""
    try:
        raise exc
    except BaseException as caught:
        return caught


class Events:
    """A structlog logger that keeps what it is given, and can be made to fail."""

    def __init__(self, fail: bool = False) -> None:
        self.events: list[dict[str, object]] = []
        self.fail = fail

    def error(self, event: str, **fields: object) -> None:
        if self.fail:
            raise RuntimeError("the log is broken")
        self.events.append({"event": event, **fields})


def test_every_kind_of_exception_is_reported_bounded() -> None:
    sent = Sent()
    events = Events()
    reporter = ErrorReporter(sent, events)  # type: ignore[arg-type]
    for n, kind in enumerate(KINDS, 1):
        reporter.report("account", raised(make(kind)), account_id="acc")
        error = sent.errors[-1]
        assert error.errors_total == reporter.total == n
        assert error.account_id == "acc"
        assert len(error.message) <= MAX_MESSAGE_CHARS + 40
        assert len(error.traceback) <= MAX_TRACEBACK_CHARS + 60
        assert "test_error_reporter.py" in error.traceback
        logged = events.events[-1]
        assert len(str(logged["error"])) <= MAX_LINE_CHARS + 40
        assert logged["exception"] == error.traceback
    assert reporter.failures == 0


def test_what_could_not_be_rendered_says_so() -> None:
    assert describe_exception(make("str_raises_system_exit")) == (
        "StrRaisesSystemExit: <str() of this StrRaisesSystemExit raised SystemExit>"
    )
    assert describe_exception(make("keyboard_interrupt")) == "KeyboardInterrupt"
    text = format_traceback(raised(make("broken_notes")))
    assert "<the full traceback could not be formatted: RuntimeError: __notes__ is broken>" in text
    assert "BrokenNotes: its notes cannot be read" in text
    huge = format_traceback(raised(make("huge_message")))
    assert f"({len('ValueError: huge ') + HUGE - 2000} more characters)" in huge  # its last line
    assert huge.startswith("Traceback (most recent call last):")
    assert len(huge) <= MAX_TRACEBACK_CHARS + 60


def test_a_failing_log_or_pipe_does_not_make_the_reporter_fail(
    capfd: pytest.CaptureFixture[str],
) -> None:
    def broken_pipe(error: WorkerError) -> bool:
        raise OSError("the pipe is broken")

    reporter = ErrorReporter(broken_pipe, Events(fail=True))  # type: ignore[arg-type]
    reporter.report("account", raised(make("str_raises_system_exit")), account_id="acc")
    assert reporter.total == 1
    assert reporter.failures == 2  # the log line, then the message: both on fd 2 instead
    err = capfd.readouterr().err
    assert "error reporter: cannot log 'error': RuntimeError" in err
    assert "error reporter: cannot send an error of account: OSError" in err
    assert "StrRaisesSystemExit: <str() of this StrRaisesSystemExit raised SystemExit>" in err


def test_a_lone_surrogate_and_a_real_logger() -> None:
    sent = Sent()
    reporter = ErrorReporter(sent, structlog.get_logger())
    reporter.report("account", raised(ValueError("bad \udcff text")))
    assert sent.errors[-1].message == "bad \\udcff text"
