"""Request parameters shared by the routes: path types, limits, and the check that
refuses query parameters a route does not know."""

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Path, Request

from hiscrm.master.api.errors import ApiError
from hiscrm.models import ACCOUNT_ID_PATTERN

PREFIX = "/api/v1"
MAX_PAGE = 1000
MAX_TAIL = 10_000
MAX_INT = 2**63 - 1  # SQLite's integers; beyond this a value is an error, not a crash

WorkerId = Annotated[str, Path(min_length=1, max_length=64)]
AccountId = Annotated[str, Path(pattern=ACCOUNT_ID_PATTERN)]
ItemIdPath = Annotated[str, Path(min_length=1, max_length=256)]


def only(*allowed: str) -> Callable[[Request], Coroutine[Any, Any, None]]:
    """A dependency refusing query parameters the route does not know."""

    async def check(request: Request) -> None:
        unknown = sorted(set(request.query_params) - set(allowed))
        if unknown:
            known = ", ".join(allowed) if allowed else "none"
            raise ApiError(
                422,
                f"unknown query parameter {unknown[0]!r} (known: {known})",
                {"unknown": unknown},
            )

    return check
