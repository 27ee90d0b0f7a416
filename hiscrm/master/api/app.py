"""The HTTP API (``/api/v1``): the FastAPI application, its authentication and routes.

Every route but ``/healthz`` needs ``Authorization: Bearer <token>`` (``/metrics`` too,
unless ``api.metrics_public``). Reads go to the read model, actions to ``Control``; the
routes themselves live in ``*_routes.py``, one file per resource.
"""

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from structlog.typing import FilteringBoundLogger

from hiscrm import __version__
from hiscrm.master.api.account_routes import account_routes
from hiscrm.master.api.auth import token_matches
from hiscrm.master.api.collection_routes import collection_routes
from hiscrm.master.api.control import Control
from hiscrm.master.api.errors import ApiError, install_error_handlers
from hiscrm.master.api.log_follow import LogFollowers
from hiscrm.master.api.metrics import MasterMetrics
from hiscrm.master.api.params import PREFIX, only
from hiscrm.master.api.read_model import ReadModel
from hiscrm.master.api.schemas import ErrorBody, Health, StatusInfo
from hiscrm.master.api.worker_routes import worker_routes


def create_app(
    read: ReadModel,
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

    async def authenticated(
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

    install_error_handlers(app, log, count_error)
    open_routes = APIRouter(prefix=PREFIX)
    routes = APIRouter(prefix=PREFIX, dependencies=[Depends(authenticated)])

    @open_routes.get("/healthz", response_model=Health, dependencies=[Depends(only())])
    async def healthz() -> JSONResponse:
        health = read.health()
        status = 503 if health.status == "failing" else 200
        return JSONResponse(health.model_dump(), status_code=status)

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
        return await read.status()

    worker_routes(routes, read, control, followers)
    account_routes(routes, read, control)
    collection_routes(routes, read, control)
    app.include_router(open_routes)
    app.include_router(routes)
    return app
