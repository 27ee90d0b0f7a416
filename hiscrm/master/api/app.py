"""The HTTP API (``/api/v1``): routes, authentication, and errors as ``{"error", "detail"}``.

Every route but ``/healthz`` needs ``Authorization: Bearer <token>`` (``/metrics`` too,
unless ``api.metrics_public``). Bad input answers 4xx with a message naming what was
wrong, unknown query parameters included; a 500 means a bug, and is logged with its
traceback and counted like any other error in the master.
"""

from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field, create_model
from starlette.exceptions import HTTPException
from structlog.typing import FilteringBoundLogger

from hiscrm import __version__
from hiscrm.items import epoch_ms
from hiscrm.master.api.auth import token_matches
from hiscrm.master.api.control import Control, NotFound
from hiscrm.master.api.log_follow import FollowResponse, LogFollowers, TooManyFollowers
from hiscrm.master.api.metrics import MasterMetrics
from hiscrm.master.api.schemas import (
    STORED_MODELS,
    AccountInfo,
    ErrorBody,
    Health,
    Page,
    ReloadResult,
    StatusInfo,
    SyncRequested,
    WorkerAction,
    WorkerInfo,
    page_of,
)
from hiscrm.master.data import queries
from hiscrm.master.supervision.supervisor import CommandRefused
from hiscrm.models import ACCOUNT_ID_PATTERN

PREFIX = "/api/v1"
MAX_PAGE = 1000
MAX_TAIL = 10_000
MAX_INT = 2**63 - 1  # SQLite's integers; beyond this a value is an error, not a crash


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: Any = None) -> None:
        super().__init__(error)
        self.status, self.error, self.detail = status, error, detail


class LogLines(BaseModel):
    worker: str
    path: str
    lines: list[str]


def only(*allowed: str) -> Callable[[Request], None]:
    """A dependency refusing query parameters the route does not know."""

    def check(request: Request) -> None:
        unknown = sorted(set(request.query_params) - set(allowed))
        if unknown:
            known = ", ".join(allowed) if allowed else "none"
            raise ApiError(
                422,
                f"unknown query parameter {unknown[0]!r} (known: {known})",
                {"unknown": unknown},
            )

    return check


WorkerId = Annotated[str, Path(min_length=1, max_length=64)]
AccountId = Annotated[str, Path(pattern=ACCOUNT_ID_PATTERN)]
ItemIdPath = Annotated[str, Path(min_length=1, max_length=256)]


def create_app(
    control: Control,
    metrics: MasterMetrics,
    token: str | None,
    metrics_public: bool,
    log: FilteringBoundLogger,
    count_error: Callable[[], int],
    followers: LogFollowers,
) -> FastAPI:
    app = FastAPI(
        title="hiscrm",
        version=__version__,
        openapi_url=None,  # served below, behind the token like every route but /healthz
        docs_url=None,
        redoc_url=None,
        responses={
            401: {"model": ErrorBody},
            404: {"model": ErrorBody},
            422: {"model": ErrorBody},
        },
    )
    bearer = HTTPBearer(auto_error=False, description="The token in <state_dir>/token")

    def authenticated(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> None:
        if token is None:
            return
        if credentials is None:
            raise ApiError(
                401,
                "missing bearer token: send 'Authorization: Bearer <token from state_dir/token>'",
            )
        if not token_matches(credentials.credentials, token):
            raise ApiError(401, "invalid token")

    _install_error_handlers(app, log, count_error)
    open_routes = APIRouter(prefix=PREFIX)
    routes = APIRouter(prefix=PREFIX, dependencies=[Depends(authenticated)])

    @open_routes.get("/healthz", response_model=Health, dependencies=[Depends(only())])
    async def healthz() -> JSONResponse:
        health = control.health()
        return JSONResponse(health.model_dump(), status_code=200 if health.status == "ok" else 503)

    metrics_router = open_routes if metrics_public else routes

    @metrics_router.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}}},
        dependencies=[Depends(only())],
    )
    async def prometheus() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @routes.get("/openapi.json", include_in_schema=False, dependencies=[Depends(only())])
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @routes.get("/status", dependencies=[Depends(only())])
    async def status() -> StatusInfo:
        return await control.status()

    # --- workers -------------------------------------------------------------------------

    @routes.get("/workers", dependencies=[Depends(only("limit", "offset"))])
    async def workers(
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
        offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
    ) -> Page[WorkerInfo]:
        return page_of(control.workers(), limit, offset)

    @routes.get("/workers/{worker_id}", dependencies=[Depends(only())])
    async def worker(worker_id: WorkerId) -> WorkerInfo:
        return control.worker(control.handle(worker_id))

    async def act(worker_id: str, action: str) -> WorkerAction:
        try:
            return await control.act(worker_id, action, control.action_timeout_s())
        except TimeoutError:
            raise ApiError(
                504,
                f"{action} of {worker_id} did not settle in time",
                control.worker(control.handle(worker_id)).model_dump(),
            ) from None

    for action in ("restart", "stop", "start"):

        async def action_route(worker_id: WorkerId, action: str = action) -> WorkerAction:
            return await act(worker_id, action)

        routes.add_api_route(
            f"/workers/{{worker_id}}/{action}",
            action_route,
            methods=["POST"],
            response_model=WorkerAction,
            name=f"{action}_worker",
            dependencies=[Depends(only())],
            responses={409: {"model": ErrorBody}, 504: {"model": ErrorBody}},
        )

    @routes.get(
        "/workers/{worker_id}/logs",
        dependencies=[Depends(only("tail", "follow"))],
        response_model=LogLines,
        responses={200: {"content": {"text/plain": {}}}, 503: {"model": ErrorBody}},
    )
    async def worker_logs(
        worker_id: WorkerId,
        tail: Annotated[int, Query(ge=0, le=MAX_TAIL)] = 100,
        follow_: Annotated[bool, Query(alias="follow")] = False,
    ) -> Any:
        handle = control.handle(worker_id)
        lines = await control.worker_log(handle, tail)
        if not follow_:
            return LogLines(worker=worker_id, path=str(handle.log_path), lines=lines)
        try:
            follower = followers.open(handle.log_path)
        except TooManyFollowers as exc:
            raise ApiError(503, str(exc)) from None
        return FollowResponse(follower, lines)

    @routes.post(
        "/reload",
        dependencies=[Depends(only())],
        responses={409: {"model": ErrorBody}, 504: {"model": ErrorBody}},
    )
    async def reload() -> ReloadResult:
        timeout = control.action_timeout_s() * len(control.supervisor.handles)
        try:
            return await control.reload(timeout)
        except TimeoutError:
            raise ApiError(504, "the rolling restart did not finish in time") from None

    # --- accounts ------------------------------------------------------------------------

    @routes.get("/accounts", dependencies=[Depends(only("limit", "offset"))])
    async def accounts(
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
        offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
    ) -> Page[AccountInfo]:
        return page_of(control.accounts(), limit, offset)

    @routes.get("/accounts/{account_id}", dependencies=[Depends(only())])
    async def account(account_id: AccountId) -> AccountInfo:
        return await control.account(account_id)

    @routes.post(
        "/accounts/{account_id}/sync",
        status_code=202,
        dependencies=[Depends(only("from_seq"))],
        responses={409: {"model": ErrorBody}},
    )
    async def sync(
        account_id: AccountId, from_seq: Annotated[int | None, Query(ge=0, le=MAX_INT)] = None
    ) -> SyncRequested:
        try:
            return control.request_sync(account_id, from_seq)
        except NotFound:
            raise
        except LookupError as exc:
            raise ApiError(409, str(exc)) from None

    for collection in queries.SPECS:
        _add_collection_routes(routes, control, collection)

    app.include_router(open_routes)
    app.include_router(routes)
    return app


def _collection_query_model(collection: str) -> type[BaseModel]:
    spec = queries.SPECS[collection]
    fields: dict[str, Any] = {
        "limit": (int, Field(50, ge=1, le=MAX_PAGE)),
        "offset": (int, Field(0, ge=0, le=MAX_INT)),
        "since": (
            int | None,
            Field(None, ge=0, le=MAX_INT, description=f"ms, {spec.time_field} >= since"),
        ),
        "until": (
            int | None,
            Field(None, ge=0, le=MAX_INT, description=f"ms, {spec.time_field} < until"),
        ),
        "sort": (Literal[spec.sort_columns], spec.time_field),
        "order": (Literal["asc", "desc"], "desc"),
    }
    fields.update({name: (str | None, Field(None, min_length=1)) for name in spec.filters})
    if spec.readable:
        fields["is_read"] = (bool | None, None)
    model: type[BaseModel] = create_model(
        f"{collection.title()}Query", __config__=ConfigDict(extra="forbid"), **fields
    )
    return model


def _add_collection_routes(router: APIRouter, control: Control, collection: str) -> None:
    spec = queries.SPECS[collection]
    Model = STORED_MODELS[collection]
    Params = _collection_query_model(collection)

    async def list_items(account_id: AccountId, params: Annotated[Params, Query()]) -> Any:  # type: ignore[valid-type]
        control.check_account(account_id)
        values = params.model_dump()  # type: ignore[attr-defined]
        query = queries.CollectionQuery(
            account_id=account_id,
            filters={f: values[f] for f in spec.filters if values.get(f) is not None},
            is_read=values.get("is_read"),
            since=values["since"],
            until=values["until"],
            sort=values["sort"],
            order=values["order"],
            limit=values["limit"],
            offset=values["offset"],
        )
        rows, total = await control.reader.page(collection, query)
        return {"items": rows, "total": total, "limit": query.limit, "offset": query.offset}

    router.add_api_route(
        f"/accounts/{{account_id}}/{collection}",
        list_items,
        methods=["GET"],
        response_model=Page[Model],  # type: ignore[valid-type]
        name=f"list_{collection}",
    )

    async def get_one(account_id: AccountId, item_id: ItemIdPath) -> Any:
        control.check_account(account_id)
        row = await control.reader.run(
            lambda conn: queries.get_item(conn, collection, account_id, item_id)
        )
        if row is None:
            raise NotFound(f"no {collection[:-1]} {item_id!r} in account {account_id!r}")
        return row

    router.add_api_route(
        f"/accounts/{{account_id}}/{collection}/{{item_id}}",
        get_one,
        methods=["GET"],
        response_model=Model,
        name=f"get_{collection[:-1]}",
        dependencies=[Depends(only())],
    )
    if not spec.readable:
        return

    async def mark_read(account_id: AccountId, item_id: ItemIdPath) -> Any:
        control.check_account(account_id)
        now_ms = epoch_ms()
        row = await control.supervisor.store.call(
            lambda conn: queries.mark_read(conn, collection, account_id, item_id, now_ms)
        )
        if row is None:
            raise NotFound(f"no {collection[:-1]} {item_id!r} in account {account_id!r}")
        return row

    router.add_api_route(
        f"/accounts/{{account_id}}/{collection}/{{item_id}}/read",
        mark_read,
        methods=["POST"],
        response_model=Model,
        name=f"mark_{collection[:-1]}_read",
        dependencies=[Depends(only())],
    )


def _install_error_handlers(
    app: FastAPI, log: FilteringBoundLogger, count_error: Callable[[], int]
) -> None:
    def body(status: int, error: str, detail: Any = None) -> JSONResponse:
        return JSONResponse(
            ErrorBody(error=error, detail=detail).model_dump(mode="json"), status_code=status
        )

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        response = body(exc.status, exc.error, exc.detail)
        if headers:
            response.headers.update(headers)
        return response

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> JSONResponse:
        return body(404, str(exc))

    @app.exception_handler(CommandRefused)
    async def refused(request: Request, exc: CommandRefused) -> JSONResponse:
        return body(409, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {
                "where": ".".join(str(p) for p in e["loc"]),
                "problem": e["msg"],
                "input": e.get("input"),
            }
            for e in exc.errors()
        ]
        first = problems[0] if problems else {"where": "request", "problem": "invalid"}
        if "extra_forbidden" in {e["type"] for e in exc.errors()}:
            extra = [
                p["where"].rsplit(".", 1)[-1]
                for p, e in zip(problems, exc.errors(), strict=True)
                if e["type"] == "extra_forbidden"
            ]
            return body(422, f"unknown query parameter {extra[0]!r}", jsonable(problems))
        return body(422, f"{first['where']}: {first['problem']}", jsonable(problems))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return body(exc.status_code, str(exc.detail))

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
        return body(500, f"internal error: {type(exc).__name__}: {exc}")


def jsonable(value: Any) -> Any:
    """Validation inputs may be anything; make them JSON."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)
