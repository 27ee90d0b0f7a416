"""A command routed to another master (``command_router``): what carries one out, and
what it can answer besides its result. Free of the PostgreSQL driver, so the API imports
it on either store."""

from collections.abc import Awaitable, Callable
from typing import Any

Executor = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]  # (account, args)


class Refused(Exception):
    """The command cannot be carried out here (an expected answer, not a fault)."""


class RoutingFailed(Exception):
    """The command did not succeed: ``status`` for the API (409, 503, 504) and why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
