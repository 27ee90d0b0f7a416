"""Text about errors that is always fit to log and to send: never raises, always valid
Unicode, bounded in size.

Platforms raise whatever they like: an exception whose ``str()`` or ``repr()`` raises
(even ``SystemExit``), whose ``__notes__`` cannot be read, with a message of megabytes,
with a lone surrogate in it (which JSON cannot carry), or a group of such. Reporting
them must not fail in turn, nor flood the log: what cannot be rendered is replaced by a
note saying so, and what is too long is cut with a note saying how much was left out.

Catching ``BaseException`` here is deliberate: rendering is synchronous (no
cancellation can arrive), and a ``SystemExit`` raised by a platform's ``__str__`` is the
platform's bug, not a request to exit.
"""

import traceback
from typing import Any

import msgspec

MAX_MESSAGE_CHARS = 2_000  # an error's message, as sent and stored
MAX_LINE_CHARS = 500  # "Type: message" in log lines and states
MAX_TRACEBACK_CHARS = 16_000  # a traceback, as logged and sent
MAX_TRACEBACK_LINE_CHARS = 2_000  # one line of it
TRACEBACK_HEAD_SHARE = 4  # a cut traceback keeps its first 1/4 and its last 3/4


def unicode_safe(text: str) -> str:
    """``text`` with lone surrogates written as escapes (``\\ud800``)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def unicode_safe_data(value: Any) -> Any:
    """``value`` (as ``model_dump`` makes it) with every string made ``unicode_safe``."""
    if isinstance(value, str):
        return unicode_safe(value)
    if isinstance(value, list):
        return [unicode_safe_data(v) for v in value]
    if isinstance(value, dict):
        return {unicode_safe_data(k): unicode_safe_data(v) for k, v in value.items()}
    return value


def cut(text: str, limit: int) -> str:
    """``text``, or its first ``limit`` characters and how many more there were."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"


def type_name(exc: BaseException) -> str:
    """The name of the exception's class (a metaclass can make even that fail)."""
    try:
        name = type(exc).__name__
    except BaseException:  # see the module's docstring
        return "<unnamed exception type>"
    return unicode_safe(name) if isinstance(name, str) else "<unnamed exception type>"


def exception_message(exc: BaseException, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``str(exc)`` (at most ``limit`` characters), or a note that it could not be had."""
    try:
        text = str(exc)
    except BaseException as failure:  # a broken __str__ is the platform's bug
        return f"<str() of this {type_name(exc)} raised {type_name(failure)}>"
    return unicode_safe(cut(text, limit))


def describe_exception(exc: BaseException, limit: int = MAX_LINE_CHARS) -> str:
    """``Type: message``, as logs and states show an error (at most about ``limit``
    characters)."""
    message = exception_message(exc, limit)
    return cut(f"{type_name(exc)}: {message}" if message else type_name(exc), limit)


def format_traceback(exc: BaseException, limit: int = MAX_TRACEBACK_CHARS) -> str:
    """The traceback as Python prints it (chained causes and groups included), each line
    at most ``MAX_TRACEBACK_LINE_CHARS``; a longer whole keeps its beginning and its end
    (where the error line is). If it cannot be formatted, its frames and what could be
    had of the error, with a note why."""
    try:
        text = "".join(traceback.format_exception(exc))
    except BaseException as failure:  # e.g. __notes__ that cannot be read
        text = _frames_only(exc, failure)
    return _bounded(unicode_safe(text), limit)


def _frames_only(exc: BaseException, failure: BaseException) -> str:
    try:
        frames = "".join(traceback.format_tb(exc.__traceback__))
    except BaseException as second:
        frames = f"  <its frames could not be formatted either: {type_name(second)}>\n"
    return (
        "Traceback (most recent call last):\n"
        f"{frames}{describe_exception(exc, MAX_TRACEBACK_LINE_CHARS)}\n"
        f"<the full traceback could not be formatted: {describe_exception(failure)}>\n"
    )


def _bounded(text: str, limit: int) -> str:
    lines = [cut(line.rstrip("\n"), MAX_TRACEBACK_LINE_CHARS) for line in text.splitlines()]
    joined = "\n".join(lines) + "\n"
    if len(joined) <= limit:
        return joined
    head = limit // TRACEBACK_HEAD_SHARE
    tail = limit - head
    left_out = len(joined) - head - tail
    return f"{joined[:head]}\n… ({left_out} characters left out) …\n{joined[-tail:]}"


class RenderedError(msgspec.Struct, frozen=True):
    """An exception as text, every part bounded and valid Unicode."""

    type_name: str
    message: str  # at most MAX_MESSAGE_CHARS
    line: str  # "Type: message", at most about MAX_LINE_CHARS
    traceback: str  # at most about MAX_TRACEBACK_CHARS


def render(exc: BaseException) -> RenderedError:
    """Everything the reporter needs of ``exc``; never raises."""
    try:
        return RenderedError(
            type_name(exc), exception_message(exc), describe_exception(exc), format_traceback(exc)
        )
    except BaseException as failure:  # each part guards itself; this is the net
        note = f"<this exception could not be rendered: {type_name(failure)}>"
        return RenderedError(type_name(exc), note, note, note + "\n")
