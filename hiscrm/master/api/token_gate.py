"""The check in front of every route: an ASGI middleware, so a request without the right
credentials is answered 401 before anything else is decided (routing, a redirect for a
trailing slash, a 405 for the wrong method, a 404): nothing about the routes is told to
a client that has shown none. Only the open paths (health, the dashboard's sign-in, and
the metrics when ``api.metrics_public``) pass without them.

Two credentials are accepted: the bearer token (scripts, hiscrmctl), and the dashboard's
session cookie (``sessions.py``). A request with a cookie and no token that would change
something (any method but GET, HEAD, OPTIONS) must carry the session's CSRF token in
``X-CSRF-Token``, or it is refused 403. A request made with a session ends when the
session does: a stream (events, a log being followed) is closed at the expiry.
"""

import asyncio
import html
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from hiscrm.items import epoch_ms
from hiscrm.master.api.auth import token_matches
from hiscrm.master.api.sessions import (
    COOKIE_REFUSED,
    CSRF_HEADER,
    SIGN_IN_AGAIN,
    CookieRefusal,
    Session,
    Sessions,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

MISSING = "missing bearer token: send 'Authorization: Bearer <token from state_dir/token>'"
CSRF_MISSING = (
    "missing or wrong CSRF token: a write made with the dashboard's session cookie must "
    "send the session's token (GET /api/v1/session) in X-CSRF-Token"
)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SESSION_KEY = "hiscrm.session"  # in the scope: the Session a request was let in with
PAGE_HEADERS = [
    (b"content-security-policy", b"default-src 'none'; style-src 'self'; frame-ancestors 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
    (b"cache-control", b"no-store"),
]


def is_page(path: str) -> bool:
    """A path a browser opens (the dashboard), answered with HTML when refused."""
    return path == "/" or path.startswith("/ui/")


def refusal_page(title: str, reason: str) -> bytes:
    text = html.escape(reason)
    return (
        "<!doctype html><html lang=en><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width">'
        f"<title>hiscrm: {html.escape(title)}</title><link rel=stylesheet href=/ui/signin.css>"
        f"<main><h1>{html.escape(title)}</h1><p>{text}</p>"
        "<p>On the master's host, run <code>hiscrmctl open</code> and open the link it "
        "prints (<code>hiscrmctl open --browser</code> opens it for you).</p></main>"
    ).encode()


def session_of(scope: Scope) -> Session | None:
    """The session a request came in with; None for the bearer token (or no auth)."""
    session = scope.get(SESSION_KEY)
    return session if isinstance(session, Session) else None


class TokenGate:
    def __init__(
        self,
        app: App,
        token: str | None,
        open_paths: frozenset[str],
        sessions: Sessions | None = None,
    ) -> None:
        self._app = app
        self._token = token
        self._open = open_paths
        self._sessions = sessions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._token is None or scope["path"] in self._open:
            await self._app(scope, receive, send)
            return
        headers = _headers(scope)
        authorization = headers.get(b"authorization")
        if authorization is not None:
            error = _bearer_refusal(authorization, self._token)
            if error is None:
                await self._app(scope, receive, send)
            else:
                await _refuse(send, 401, error, scope["path"])
            return
        cookie = self._cookie(headers)
        if cookie is None or self._sessions is None:
            await _refuse(send, 401, MISSING, scope["path"])
            return
        checked = self._sessions.check(cookie, epoch_ms())
        if isinstance(checked, CookieRefusal):
            await _refuse(send, 401, f"{COOKIE_REFUSED[checked]}: {SIGN_IN_AGAIN}", scope["path"])
            return
        if scope["method"] not in SAFE_METHODS and not self._sessions.csrf_matches(
            checked, headers.get(CSRF_HEADER, b"").decode("latin-1")
        ):
            await _refuse(send, 403, CSRF_MISSING, scope["path"])
            return
        scope[SESSION_KEY] = checked
        await self._app(scope, _until(receive, checked.expires_at), send)

    def _cookie(self, headers: dict[bytes, bytes]) -> str | None:
        if self._sessions is None:
            return None
        name = self._sessions.cookie_name
        for pair in headers.get(b"cookie", b"").decode("latin-1").split(";"):
            key, _, value = pair.strip().partition("=")
            if key == name:
                return value.strip()
        return None


def _headers(scope: Scope) -> dict[bytes, bytes]:
    """The request's headers; repeated cookie headers joined, as a cookie header is."""
    found: dict[bytes, bytes] = {}
    for name, value in scope.get("headers", ()):
        if name == b"cookie" and name in found:
            found[name] += b"; " + value
        elif name not in found:
            found[name] = value
    return found


def _bearer_refusal(header: bytes, token: str) -> str | None:
    """Why the request is refused, or None if its token is right."""
    scheme, _, credentials = header.decode("latin-1").partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return MISSING
    return None if token_matches(credentials.strip(), token) else "invalid token"


def _until(receive: Receive, expires_at: int) -> Receive:
    """``receive`` that says the client left once the session has expired, which ends
    a streaming answer (events, a followed log) made with that session."""

    async def receive_until_expiry() -> Message:
        try:
            async with asyncio.timeout(max(0.0, (expires_at - epoch_ms()) / 1000)):
                return await receive()
        except TimeoutError:
            return {"type": "http.disconnect"}

    return receive_until_expiry


async def _refuse(send: Send, status: int, error: str, path: str) -> None:
    if is_page(path):
        title = "not signed in" if status == 401 else "refused"
        body = refusal_page(title, error)
        headers = [(b"content-type", b"text/html; charset=utf-8"), *PAGE_HEADERS]
    else:
        body = json.dumps({"error": error, "detail": None}).encode()
        headers = [(b"content-type", b"application/json")]
    headers.append((b"content-length", str(len(body)).encode()))
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
