"""Imports that would cost a process's start time for something hiscrm does not use."""

import sys


def import_structlog() -> None:
    """Import structlog without rich. structlog loads rich (~50 ms of a start) only to
    offer rich's tracebacks; hiscrm renders tracebacks plainly (``log_config``), so rich
    is hidden while structlog loads, and stays importable for whoever wants it later.
    Nothing to do if either is loaded already."""
    if "structlog" in sys.modules or "rich" in sys.modules:
        return
    sys.modules["rich"] = None  # type: ignore[assignment]  # "import rich" fails meanwhile
    try:
        import structlog  # noqa: F401
    finally:
        del sys.modules["rich"]
