"""Talking to the master's API, once :func:`find_master` has checked it is the master.

The master is found through ``<state_dir>/master.json`` (its pid and API URL) and
``<state_dir>/token``. Every way this can fail becomes a :class:`CtlError` with a
sentence that says what to check. Proxy settings in the environment are ignored: the
token goes to the master's own address and nowhere else.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from hiscrm.ctl.errors import CtlError
from hiscrm.ctl.master_info import find_master, read_token

PAGE = 1000

__all__ = ["CtlError", "MasterClient"]


class MasterClient:
    def __init__(self, state_dir: Path, timeout_s: float) -> None:
        self.state_dir = state_dir
        master = find_master(state_dir)
        self.pid = master.pid
        self.url = master.url
        self.auth = master.auth  # whether the API wants the token
        self._token_path = master.token_path
        token = read_token(master.token_path, master.auth)
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        # trust_env=False: no proxy variables, no .netrc; redirects are not followed.
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout_s, trust_env=False
        )

    def request(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        query = {k: v for k, v in params.items() if v is not None}
        with self._errors(method, path):
            response = self._http.request(method, path, params=query, json=body)
        return self._json(response, method, path)

    @contextmanager
    def _errors(self, method: str, path: str) -> Iterator[None]:
        """httpx's errors as one-line CtlErrors."""
        try:
            yield
        except httpx.ConnectError:
            raise CtlError(
                f"cannot reach the master at {self.url}: is it running?", url=self.url
            ) from None
        except httpx.TimeoutException:
            raise CtlError(
                f"the master at {self.url} did not answer in time", url=self.url
            ) from None
        except httpx.RemoteProtocolError:
            raise CtlError(
                f"the master at {self.url} closed the connection", url=self.url
            ) from None
        except httpx.HTTPError as exc:
            raise CtlError(f"{method} {self.url}{path} failed: {exc}", url=self.url) from None

    def all_pages(self, path: str, **params: Any) -> list[Any]:
        """Every item of a paged list (``params``: its filters and order)."""
        items: list[Any] = []
        while True:
            page = self.request("GET", path, **params, limit=PAGE, offset=len(items))
            items += page["items"]
            if not page["items"] or len(items) >= page["total"]:
                return items

    def stream(self, path: str, **params: Any) -> Iterator[bytes]:
        query = {k: v for k, v in params.items() if v is not None}
        with (
            self._errors("GET", path),
            self._http.stream("GET", path, params=query, timeout=None) as response,
        ):
            if response.status_code >= 400:
                response.read()
                self._json(response, "GET", path)
            yield from response.iter_raw()

    def stream_lines(self, path: str, **params: Any) -> Iterator[str]:
        """A streamed answer's lines (errors, also mid-stream, as CtlError)."""
        query = {k: v for k, v in params.items() if v is not None}
        with (
            self._errors("GET", path),
            self._http.stream("GET", path, params=query, timeout=None) as response,
        ):
            if response.status_code >= 400:
                response.read()
                self._json(response, "GET", path)
            yield from response.iter_lines()

    def _json(self, response: httpx.Response, method: str, path: str) -> Any:
        try:
            body = response.json()
        except ValueError:
            body = {"error": response.text[:200]}
        status = response.status_code
        error = body.get("error", "") if isinstance(body, dict) else body
        detail = body.get("detail") if isinstance(body, dict) else None
        if status == 401 and not self._token_path.exists():
            raise CtlError(
                f"the API token file {self._token_path} is missing: it is made when the "
                "master starts; restart the master to make a new one",
                path=str(self._token_path),
                status=status,
            )
        if status == 401:
            raise CtlError(
                f"the master refused the token in {self._token_path}: {error}",
                path=str(self._token_path),
                status=status,
            )
        if status >= 400:
            raise CtlError(
                f"{method} {path}: {status} {error}", said=str(error), status=status, detail=detail
            )
        return body
