"""Signing in to the dashboard: ``POST /session/codes`` (the bearer token only: what
``hiscrmctl open`` calls) makes a one-time code; ``GET /ui/sign-in?code=…`` exchanges it
for a session cookie; ``GET /session`` tells the page its CSRF token;
``POST /session/sign-out`` drops the cookie. Every sign-in, and every refused one, is
logged and counted (``hiscrm_ui_sign_ins_total``)."""

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel
from structlog.typing import FilteringBoundLogger

from hiscrm.items import epoch_ms
from hiscrm.master.api.errors import ApiError
from hiscrm.master.api.params import only
from hiscrm.master.api.sessions import SIGN_IN_REFUSED, Session, Sessions
from hiscrm.master.api.token_gate import PAGE_HEADERS, refusal_page, session_of

SIGN_IN_PATH = "/ui/sign-in"
SIGN_IN_STYLE = "/ui/signin.css"  # open, so a refusal page is readable before signing in


class SessionInfo(BaseModel):
    auth: Literal["session", "token", "none"]  # what this request was let in with
    csrf_token: str | None  # send it in X-CSRF-Token with every write made with the cookie
    expires_at: int | None  # when the session ends (ms)
    session: str | None  # the session as the master's log names it


class SignInCodeInfo(BaseModel):
    code: str
    path: str  # open this path of the master (with its host and port) to sign in
    expires_at: int  # ms; good once, until then


class SignedOut(BaseModel):
    signed_out: bool


def _client(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "unknown"


def _cookie_header(sessions: Sessions, session: Session, secure: bool, max_age: int) -> str:
    parts = [
        f"{sessions.cookie_name}={session.cookie if max_age else ''}",
        f"Max-Age={max_age}",
        "Path=/",
        "HttpOnly",
        "SameSite=Strict",
    ]
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


def session_routes(
    api: APIRouter, root: APIRouter, sessions: Sessions | None, log: FilteringBoundLogger
) -> None:
    @api.get("/session", dependencies=[Depends(only())])
    async def session_info(request: Request) -> SessionInfo:
        """How this request was let in; for the dashboard's session, its CSRF token."""
        session = session_of(request.scope)
        if session is None or sessions is None:
            return SessionInfo(
                auth="none" if sessions is None else "token",
                csrf_token=None,
                expires_at=None,
                session=None,
            )
        return SessionInfo(
            auth="session",
            csrf_token=sessions.csrf_token(session),
            expires_at=session.expires_at,
            session=sessions.public_id(session),
        )

    @api.post(
        "/session/codes",
        status_code=201,
        dependencies=[Depends(only())],
        responses={403: {"description": "asked with a session, not the token"}},
    )
    async def new_code(request: Request) -> SignInCodeInfo:
        """A one-time sign-in code for the dashboard (what ``hiscrmctl open`` prints)."""
        if sessions is None:
            raise ApiError(409, "the API takes no token (api.auth = false): open / directly")
        if session_of(request.scope) is not None:
            raise ApiError(403, "sign-in codes are made with the bearer token only")
        made = sessions.new_code(epoch_ms())
        log.info("dashboard sign-in code made", expires_at=made.expires_at)
        return SignInCodeInfo(
            code=made.code, path=f"{SIGN_IN_PATH}?code={made.code}", expires_at=made.expires_at
        )

    @api.post("/session/sign-out", dependencies=[Depends(only())])
    async def sign_out(request: Request) -> JSONResponse:
        """Forget this browser's session cookie (the token is not touched)."""
        session = session_of(request.scope)
        response = JSONResponse(SignedOut(signed_out=session is not None).model_dump())
        if session is not None and sessions is not None:
            log.info("dashboard sign-out", session=sessions.public_id(session))
            secure = request.url.scheme == "https"
            response.headers["set-cookie"] = _cookie_header(sessions, session, secure, 0)
        return response

    @root.get(SIGN_IN_PATH, include_in_schema=False, dependencies=[Depends(only("code"))])
    async def sign_in(
        request: Request, code: Annotated[str, Query(min_length=1, max_length=200)]
    ) -> HTMLResponse:
        """The one-time link: a session cookie for a good code, then on to the page."""
        headers = dict((k.decode(), v.decode()) for k, v in PAGE_HEADERS)
        if sessions is None:
            return HTMLResponse(refusal_page("no sign-in", "the API takes no token"), 409, headers)
        redeemed = sessions.redeem(code, epoch_ms())
        if not isinstance(redeemed, Session):
            log.warning(
                "dashboard sign-in refused",
                reason=redeemed.value,
                client=_client(request),
                sign_ins_refused=sessions.sign_ins["refused"],
            )
            page = refusal_page("sign-in refused", SIGN_IN_REFUSED[redeemed])
            return HTMLResponse(page, 401, headers)
        log.info(
            "dashboard sign-in",
            session=sessions.public_id(redeemed),
            client=_client(request),
            user_agent=request.headers.get("user-agent", "")[:200],
            expires_at=redeemed.expires_at,
            sign_ins=sessions.sign_ins["ok"],
        )
        max_age = sessions.ttl_ms // 1000
        headers["set-cookie"] = _cookie_header(
            sessions, redeemed, request.url.scheme == "https", max_age
        )
        # On to the page by a same-origin navigation (not a redirect): the Strict cookie
        # goes with it even when the link was opened from another site.
        body = (
            "<!doctype html><html lang=en><meta charset=utf-8>"
            '<meta http-equiv=refresh content="0;url=/">'
            f'<title>hiscrm: signed in</title><link rel=stylesheet href="{SIGN_IN_STYLE}">'
            '<main><h1>Signed in</h1><p><a href="/">Open the dashboard</a></p></main>'
        )
        return HTMLResponse(body, 200, headers)
