"""``GET /events``: the master's events as Server-Sent Events (``hiscrm.master.events``)."""

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query
from fastapi.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send
from structlog.typing import FilteringBoundLogger

from hiscrm.config import EventsConfig
from hiscrm.event_names import EVENT_NAMES, check_prefix
from hiscrm.master.api.errors import ApiError
from hiscrm.master.api.params import MAX_INT, MAX_PAGE, only
from hiscrm.master.data.event_filter import EventFilter
from hiscrm.master.events.hub import CutOff, EventHub
from hiscrm.master.events.stream import EventStream, StreamRequest
from hiscrm.models import ACCOUNT_ID_PATTERN

TYPES_HELP = "Comma-separated event name prefixes, of: " + ", ".join(
    sorted({n.split(".")[0] for n in EVENT_NAMES} | set(EVENT_NAMES))
)
WRITE_TIMEOUT_S = 30.0  # a client that takes no bytes for this long is let go


class ClientStuck(Exception):
    pass


class EventStreamResponse(StreamingResponse):
    """The stream; a client that stops reading is let go once a write has waited
    ``WRITE_TIMEOUT_S`` (its buffer in the master is bounded meanwhile), and counted
    (``hiscrm_event_clients_cut_off_total{reason="stopped_reading"}``)."""

    def __init__(
        self, frames: AsyncIterator[bytes], hub: EventHub, log: FilteringBoundLogger
    ) -> None:
        super().__init__(
            frames,
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )
        self._hub = hub
        self._log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def timed_send(message: Message) -> None:
            try:
                async with asyncio.timeout(WRITE_TIMEOUT_S):
                    await send(message)
            except TimeoutError:
                raise ClientStuck from None

        try:
            await super().__call__(scope, receive, timed_send)
        except* ClientStuck:
            self._hub.let_go(CutOff.STOPPED_READING)
            self._log.warning(
                "event stream client let go: it took nothing for a while",
                waited_s=WRITE_TIMEOUT_S,
                reason=CutOff.STOPPED_READING.value,
                client=str(scope.get("client")),
            )


def event_routes(
    router: APIRouter,
    hub: EventHub,
    settings: Callable[[], EventsConfig],
    log: FilteringBoundLogger,
) -> None:
    @router.get(
        "/events",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
        dependencies=[Depends(only("types", "account", "after", "last", "follow"))],
    )
    async def events(
        types: Annotated[str | None, Query(max_length=1000, description=TYPES_HELP)] = None,
        account: Annotated[str | None, Query(pattern=ACCOUNT_ID_PATTERN)] = None,
        after: Annotated[int | None, Query(ge=0, le=MAX_INT)] = None,
        last: Annotated[int | None, Query(ge=1, le=MAX_PAGE)] = None,
        follow: bool = True,
        last_event_id: Annotated[str | None, Header(max_length=32)] = None,
    ) -> StreamingResponse:
        """Events as Server-Sent Events: ``types`` (comma-separated name prefixes),
        ``account``; resume with ``Last-Event-ID`` or ``after``; ``last=N`` starts with
        the newest N; ``follow=false`` ends once what there is now was sent."""
        prefixes: list[str] = []
        for prefix in (types or "").split(","):
            if prefix.strip():
                try:
                    prefixes.append(check_prefix(prefix.strip()))
                except ValueError as exc:
                    raise ApiError(422, f"types: {exc}") from None
        cursor = after
        if last_event_id is not None and last_event_id.strip():
            if not last_event_id.strip().isdigit():
                raise ApiError(
                    422,
                    f"Last-Event-ID must be an event id (a whole number), not {last_event_id!r}",
                )
            cursor = int(last_event_id.strip())
        config = settings()
        if len([s for s in hub.subscribers if s.client]) >= config.max_clients:
            raise ApiError(503, f"{config.max_clients} event streams are open; try again later")
        request = StreamRequest(EventFilter(tuple(prefixes), account), cursor, last, follow)
        stream = EventStream(hub, request, config.heartbeat_s, config.client_buffer_kb * 1024)
        return EventStreamResponse(stream.frames(), hub, log)
