"""Replies: ``POST /accounts/{id}/messages|comments`` and the account's outbox."""

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import JSONResponse

from hiscrm.master.api.params import MAX_INT, MAX_PAGE, AccountId, only
from hiscrm.master.api.replies import (
    CommentRequest,
    MessageRequest,
    OutboxEntryInfo,
    OutboxPage,
    Replies,
    info,
)
from hiscrm.master.data.outbox_entry import OutboxState, PageQuery
from hiscrm.replies import REQUEST_ID_PATTERN

RequestIdPath = Annotated[str, Path(pattern=REQUEST_ID_PATTERN)]
SAME: dict[int | str, dict[str, Any]] = {
    200: {"model": OutboxEntryInfo, "description": "the same request, made before"},
    409: {"description": "another reply was made under this request_id"},
}


def reply_routes(router: APIRouter, replies: Replies) -> None:
    async def answer(account_id: str, body: MessageRequest | CommentRequest) -> JSONResponse:
        entry, made = await replies.send(account_id, body)
        return JSONResponse(entry.model_dump(mode="json"), status_code=202 if made else 200)

    @router.post(
        "/accounts/{account_id}/messages",
        status_code=202,
        response_model=OutboxEntryInfo,
        responses=SAME,
        dependencies=[Depends(only())],
    )
    async def send_message(account_id: AccountId, body: MessageRequest) -> JSONResponse:
        """Reply in a conversation: queued in the outbox, sent once its account runs."""
        return await answer(account_id, body)

    @router.post(
        "/accounts/{account_id}/comments",
        status_code=202,
        response_model=OutboxEntryInfo,
        responses=SAME,
        dependencies=[Depends(only())],
    )
    async def send_comment(account_id: AccountId, body: CommentRequest) -> JSONResponse:
        """Comment on a content (answering ``parent_id``): queued like a message."""
        return await answer(account_id, body)

    @router.get(
        "/accounts/{account_id}/outbox",
        dependencies=[Depends(only("state", "since", "until", "order", "limit", "offset"))],
    )
    async def outbox(
        account_id: AccountId,
        state: OutboxState | None = None,
        since: Annotated[
            int | None, Query(ge=0, le=MAX_INT, description="ms, created_at >= since")
        ] = None,
        until: Annotated[
            int | None, Query(ge=0, le=MAX_INT, description="ms, created_at < until")
        ] = None,
        order: Literal["asc", "desc"] = "desc",
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
        offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
    ) -> OutboxPage:
        """The account's replies, newest first (``order=asc``: in the order made)."""
        query = PageQuery(
            state=None if state is None else str(state), since=since, until=until, order=order
        )
        return await replies.page(account_id, query, limit, offset)

    @router.get("/accounts/{account_id}/outbox/{request_id}", dependencies=[Depends(only())])
    async def outbox_entry(account_id: AccountId, request_id: RequestIdPath) -> OutboxEntryInfo:
        return info(await replies.entry(account_id, request_id))

    @router.delete(
        "/accounts/{account_id}/outbox/{request_id}",
        responses={409: {}},
        dependencies=[Depends(only())],
    )
    async def cancel(account_id: AccountId, request_id: RequestIdPath) -> OutboxEntryInfo:
        """Cancel a queued reply (409 once it is being sent or done)."""
        return await replies.cancel(account_id, request_id)

    @router.post(
        "/accounts/{account_id}/outbox/{request_id}/retry",
        responses={409: {}},
        dependencies=[Depends(only())],
    )
    async def retry(account_id: AccountId, request_id: RequestIdPath) -> OutboxEntryInfo:
        """Queue again a reply that failed, expired or whose fate is unknown."""
        return await replies.retry(account_id, request_id)
