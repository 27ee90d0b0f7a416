"""A Server-Sent Events client for tests: reads one stream in a thread, parsing events
as an EventSource would, so a test can wait on what arrived with a deadline. Set a small
``[events] heartbeat_s`` so the thread notices ``close`` between events."""

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx


class SseEvent:
    def __init__(self, event_id: int | None, name: str, data: str) -> None:
        self.id = event_id
        self.name = name
        self.raw = data

    @property
    def data(self) -> Any:
        return json.loads(self.raw)

    def __repr__(self) -> str:
        return f"SseEvent({self.id}, {self.name!r}, {self.raw[:80]!r})"


class SseReader:
    def __init__(
        self,
        url: str,
        token: str,
        params: dict[str, Any] | None = None,
        last_event_id: int | None = None,
    ) -> None:
        self.url, self.token, self.params = url, token, params or {}
        self.last_event_id = last_event_id
        self.events: list[SseEvent] = []
        self.comments = 0
        self.retry_ms: int | None = None
        self.status: int | None = None
        self.body: str = ""  # an error answer's body
        self.ended = False  # the server ended the stream
        self.error: BaseException | None = None
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        if self.last_event_id is not None:
            headers["Last-Event-ID"] = str(self.last_event_id)
        try:
            with httpx.stream(
                "GET",
                f"{self.url}/events",
                params=self.params,
                headers=headers,
                timeout=httpx.Timeout(10.0, read=30.0),
            ) as response:
                self.status = response.status_code
                if response.status_code != 200:
                    self.body = response.read().decode()
                    return
                fields: dict[str, str] = {}
                for line in response.iter_lines():
                    if self._closing.is_set():
                        return
                    self._line(line, fields)
            self.ended = True
        except httpx.HTTPError as exc:
            if not self._closing.is_set():
                self.error = exc

    def _line(self, line: str, fields: dict[str, str]) -> None:
        if line == "":
            if "data" in fields or "event" in fields:
                event_id = int(fields["id"]) if fields.get("id") else None
                with self._lock:
                    self.events.append(
                        SseEvent(event_id, fields.get("event", "message"), fields.get("data", ""))
                    )
            fields.clear()
        elif line.startswith(":"):
            self.comments += 1
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "retry":
                self.retry_ms = int(value)
            elif name == "data" and "data" in fields:
                fields["data"] += "\n" + value
            else:
                fields[name] = value

    def snapshot(self) -> list[SseEvent]:
        with self._lock:
            return list(self.events)

    def wait(
        self, predicate: Callable[[list[SseEvent]], bool], timeout: float, what: str
    ) -> list[SseEvent]:
        deadline = time.monotonic() + timeout
        while True:
            events = self.snapshot()
            if predicate(events):
                return events
            if self.error is not None:
                raise AssertionError(f"{what}: the stream failed: {self.error!r}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout}s; got {events[-5:]}")
            time.sleep(0.01)

    def wait_ended(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the stream did not end"

    def close(self) -> None:
        self._closing.set()
        self._thread.join(40)
