"""The HTTP API (``/api/v1``): the FastAPI application, its authentication and routes;
the dashboard at ``/``.

Every route but ``/healthz`` needs ``Authorization: Bearer <token>`` or the dashboard's
session cookie (``/metrics`` too, unless ``api.metrics_public``). Reads go to the read
model, actions to ``Control``; the routes themselves live in ``*_routes.py``, one file per
resource.
"""

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from structlog.typing import FilteringBoundLogger

from hiscrm import __version__
from hiscrm.config import EventsConfig
from hiscrm.master.api.account_admin import AccountAdmin
from hiscrm.master.api.account_routes import account_routes
from hiscrm.master.api.cluster_routes import cluster_routes
from hiscrm.master.api.collection_routes import collection_routes
from hiscrm.master.api.config_update import ConfigUpdater
from hiscrm.master.api.control import Control
from hiscrm.master.api.errors import install_error_handlers
from hiscrm.master.api.event_routes import event_routes
from hiscrm.master.api.log_follow import LogFollowers
from hiscrm.master.api.master_routes import master_routes
from hiscrm.master.api.metrics import MasterMetrics
from hiscrm.master.api.params import PREFIX, only
from hiscrm.master.api.read_model import ReadModel
from hiscrm.master.api.replies import Replies
from hiscrm.master.api.reply_routes import reply_routes
from hiscrm.master.api.schemas import ErrorBody, Health, StatusInfo
from hiscrm.master.api.session_routes import SIGN_IN_PATH, SIGN_IN_STYLE, session_routes
from hiscrm.master.api.sessions import Sessions
from hiscrm.master.api.token_gate import TokenGate
from hiscrm.master.api.ui_assets import load_assets
from hiscrm.master.api.ui_routes import ui_routes
from hiscrm.master.api.worker_routes import worker_routes
from hiscrm.master.events.hub import EventHub


def create_app(
    read: ReadModel,
    control: Control,
    admin: AccountAdmin,
    updater: ConfigUpdater,
    metrics: MasterMetrics,
    token: str | None,
    metrics_public: bool,
    max_page_bytes: int,
    log: FilteringBoundLogger,
    count_error: Callable[[], int],
    followers: LogFollowers,
    hub: EventHub,
    events_config: Callable[[], EventsConfig],
    replies: Replies,
    session_ttl_s: float = 12 * 3600.0,
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
    # The token is checked by TokenGate before routing; this only documents it in the
    # OpenAPI schema (and checks nothing a second time).
    bearer = HTTPBearer(auto_error=False, description="The token in <state_dir>/token")

    async def documented(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> None:
        return None

    install_error_handlers(app, log, count_error)
    open_routes = APIRouter(prefix=PREFIX)
    routes = APIRouter(prefix=PREFIX, dependencies=[Depends(documented)])
    root = APIRouter()  # where probes and scrapers look by default, same rules

    async def healthz() -> JSONResponse:
        health = read.health()
        status = 503 if health.status == "failing" else 200
        return JSONResponse(health.model_dump(), status_code=status)

    async def prometheus() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    for router in (open_routes, root):
        router.add_api_route(
            "/healthz",
            healthz,
            response_model=Health,
            dependencies=[Depends(only())],
            include_in_schema=router is open_routes,
            responses={503: {"model": Health}},
        )
    for router in (open_routes if metrics_public else routes, root):
        router.add_api_route(
            "/metrics",
            prometheus,
            response_class=Response,
            responses={200: {"content": {"text/plain": {}}}},
            dependencies=[Depends(only())],
            include_in_schema=router is not root,
        )

    @routes.get("/openapi.json", include_in_schema=False, dependencies=[Depends(only())])
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @routes.get("/docs", include_in_schema=False, dependencies=[Depends(only())])
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=f"{PREFIX}/openapi.json", title="hiscrm API")

    @routes.get("/status", dependencies=[Depends(only())])
    async def status() -> StatusInfo:
        return await read.status()

    worker_routes(routes, read, control, followers)
    master_routes(routes, control, followers, control.master_log)
    account_routes(routes, read, control, admin, updater)
    collection_routes(routes, read, control, max_page_bytes)
    event_routes(routes, hub, events_config, log)
    reply_routes(routes, replies)
    cluster_routes(routes, read.cluster)
    # The dashboard: its sign-in and session, then its files (the catch-all /ui/… last).
    sessions = Sessions(token, session_ttl_s) if token is not None else None
    if sessions is not None:
        metrics.attach_sessions(sessions)
    session_routes(routes, root, sessions, log)
    ui_routes(root, load_assets())
    app.include_router(open_routes)
    app.include_router(routes)
    app.include_router(root)
    open_paths = {f"{PREFIX}/healthz", "/healthz", SIGN_IN_PATH, SIGN_IN_STYLE}
    if metrics_public:
        open_paths |= {f"{PREFIX}/metrics", "/metrics"}
    app.add_middleware(TokenGate, token=token, open_paths=frozenset(open_paths), sessions=sessions)
    return app
