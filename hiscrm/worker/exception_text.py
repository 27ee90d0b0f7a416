"""Text about errors that is always fit to log and to send: never raises, always valid
Unicode. Platforms raise exceptions whose ``str()`` raises, or whose message holds a lone
surrogate (which JSON cannot carry); reporting them must not fail in turn."""

from typing import Any


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


def exception_message(exc: BaseException) -> str:
    """``str(exc)``, or a note that it could not be had."""
    try:
        return unicode_safe(str(exc))
    except Exception as failure:  # a broken __str__ is the platform's bug, not ours
        return f"<str() of this {type(exc).__name__} raised {type(failure).__name__}>"


def describe_exception(exc: BaseException) -> str:
    """``Type: message``, as logs and states show an error."""
    return f"{type(exc).__name__}: {exception_message(exc)}"
