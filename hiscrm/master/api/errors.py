"""Errors of the HTTP API: every one answers ``{"error": "...", "detail": ...}``.

Bad input is a 4xx naming what was wrong (unknown query parameters and body fields
included); a 500 means a bug, and is logged with its traceback and counted like any other
error in the master. An answer is valid UTF-8 JSON whatever input it echoes: a lone
surrogate (which JSON's ``\\ud800`` escape can carry) is shown escaped, and a long input
is cut.
"""

import json
import math
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from structlog.typing import FilteringBoundLogger

from hiscrm.master.api.read_model import NotFound
from hiscrm.master.api.schemas import ErrorBody
from hiscrm.master.data.store import StoreUnavailable
from hiscrm.master.supervision.commands import CommandRefused
from hiscrm.models import printable, validation_problem


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: Any = None) -> None:
        super().__init__(error)
        self.status, self.error, self.detail = status, error, detail


ECHO_CHARS = 200  # of an input echoed in an error's detail


def error_body(status: int, error: str, detail: Any = None) -> JSONResponse:
    body = ErrorBody(error=printable(error), detail=jsonable(detail))
    return JSONResponse(body.model_dump(mode="json"), status_code=status)


def install_error_handlers(
    app: FastAPI, log: FilteringBoundLogger, count_error: Callable[[], int]
) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        response = error_body(exc.status, exc.error, exc.detail)
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> JSONResponse:
        return error_body(404, str(exc))

    @app.exception_handler(StoreUnavailable)
    async def store_unavailable(request: Request, exc: StoreUnavailable) -> JSONResponse:
        response = error_body(503, str(exc))
        response.headers["Retry-After"] = "5"
        return response

    @app.exception_handler(CommandRefused)
    async def refused(request: Request, exc: CommandRefused) -> JSONResponse:
        return error_body(409, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {
                "where": ".".join(str(p) for p in e["loc"]),
                "problem": str(e["msg"]).removeprefix("Value error, "),
                "input": echo(e.get("input")),
            }
            for e in exc.errors()
        ]
        if "extra_forbidden" in {e["type"] for e in exc.errors()}:
            extra = [
                (e["loc"][0], p["where"].rsplit(".", 1)[-1])
                for p, e in zip(problems, exc.errors(), strict=True)
                if e["type"] == "extra_forbidden"
            ]
            part, name = extra[0]
            what = "body field" if part == "body" else f"{part} parameter"
            return error_body(422, f"unknown {what} {name!r}", problems)
        message = validation_problem(exc.errors()[0]) if exc.errors() else "request: invalid"
        return error_body(422, message, problems)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        response = error_body(exc.status_code, str(exc.detail))
        response.headers.update(exc.headers or {})  # e.g. Allow on a 405
        return response

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        total = count_error()
        log.error(
            "API error",
            method=request.method,
            path=request.url.path,
            internal_errors_total=total,
            exc_info=exc,
        )
        return error_body(500, f"internal error: {type(exc).__name__}: {exc}")


def jsonable(value: Any) -> Any:
    """Validation inputs may be anything; make them JSON that encodes as UTF-8: text
    with lone surrogates escaped, non-finite numbers as text."""
    if isinstance(value, dict):
        return {printable(str(k)): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if value is None or isinstance(value, (int, float, bool)):
        return value
    return printable(repr(value))


def echo(value: Any) -> Any:
    """An input as an error echoes it: JSON, and cut to ``ECHO_CHARS`` when long (an
    input may be megabytes)."""
    value = jsonable(value)
    text = json.dumps(value, ensure_ascii=False)
    if len(text) <= ECHO_CHARS:
        return value
    return f"{text[:ECHO_CHARS]}… ({len(text):,} characters)"
