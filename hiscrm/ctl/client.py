"""Finding the running master and talking to its API.

The master is found through ``<state_dir>/master.json`` (its pid and API URL) and
``<state_dir>/token``. Every way this can fail becomes a :class:`CtlError` with a
sentence that says what to check.
"""

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil

PAGE = 1000


class CtlError(Exception):
    """Something went wrong; the message is for the operator."""


class MasterClient:
    def __init__(self, state_dir: Path, timeout_s: float) -> None:
        self.state_dir = state_dir
        info_path = state_dir / "master.json"
        try:
            info = json.loads(info_path.read_text())
        except FileNotFoundError:
            missing = f"{info_path.name} is missing"
            raise CtlError(
                f"no master is running with state directory {state_dir} ({missing})"
            ) from None
        except (OSError, ValueError) as exc:
            raise CtlError(f"cannot read {info_path}: {exc}") from None
        pid = info.get("pid")
        if not isinstance(pid, int) or not psutil.pid_exists(pid):
            raise CtlError(
                f"{info_path} names pid {pid}, which is not running: the master has died"
            )
        self.url = str(info.get("api_url", ""))
        token_path = state_dir / "token"
        headers = {}
        if token_path.exists():
            try:
                headers["Authorization"] = f"Bearer {token_path.read_text().strip()}"
            except OSError as exc:
                raise CtlError(f"cannot read the API token {token_path}: {exc}") from None
        self._token_path = token_path
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)

    def request(self, method: str, path: str, **params: Any) -> Any:
        query = {k: v for k, v in params.items() if v is not None}
        with self._errors(method, path):
            response = self._http.request(method, path, params=query)
        return self._json(response, method, path)

    @contextmanager
    def _errors(self, method: str, path: str) -> Iterator[None]:
        """httpx's errors as one-line CtlErrors."""
        try:
            yield
        except httpx.ConnectError:
            raise CtlError(f"cannot reach the master at {self.url}: is it running?") from None
        except httpx.TimeoutException:
            raise CtlError(f"the master at {self.url} did not answer in time") from None
        except httpx.RemoteProtocolError:
            raise CtlError(f"the master at {self.url} closed the connection") from None
        except httpx.HTTPError as exc:
            raise CtlError(f"{method} {self.url}{path} failed: {exc}") from None

    def all_pages(self, path: str) -> list[Any]:
        """Every item of a paged list."""
        items: list[Any] = []
        while True:
            page = self.request("GET", path, limit=PAGE, offset=len(items))
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

    def _json(self, response: httpx.Response, method: str, path: str) -> Any:
        try:
            body = response.json()
        except ValueError:
            body = {"error": response.text[:200]}
        if response.status_code == 401:
            raise CtlError(
                f"the master refused the token in {self._token_path}: {body.get('error')}"
            )
        if response.status_code >= 400:
            error = body.get("error", "") if isinstance(body, dict) else body
            raise CtlError(f"{method} {path}: {response.status_code} {error}")
        return body
