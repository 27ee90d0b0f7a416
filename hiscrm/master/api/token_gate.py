"""The token check in front of every route: an ASGI middleware, so a request without the
right token is answered 401 before anything else is decided (routing, a redirect for a
trailing slash, a 405 for the wrong method, a 404): nothing about the routes is told to
a client that has not shown the token. Only the open paths (health, and the metrics when
``api.metrics_public``) pass without it."""

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from hiscrm.master.api.auth import token_matches

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

MISSING = "missing bearer token: send 'Authorization: Bearer <token from state_dir/token>'"


class TokenGate:
    def __init__(self, app: App, token: str | None, open_paths: frozenset[str]) -> None:
        self._app = app
        self._token = token
        self._open = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._token is None or scope["path"] in self._open:
            await self._app(scope, receive, send)
            return
        error = self._refusal(scope)
        if error is None:
            await self._app(scope, receive, send)
            return
        body = json.dumps({"error": error, "detail": None}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b"Bearer"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _refusal(self, scope: Scope) -> str | None:
        """Why the request is refused, or None if its token is right."""
        assert self._token is not None
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, credentials = value.decode("latin-1").partition(" ")
                if scheme.lower() != "bearer" or not credentials.strip():
                    return MISSING
                return None if token_matches(credentials.strip(), self._token) else "invalid token"
        return MISSING
