"""Replies through the API (``POST /accounts/{id}/messages|comments``, the outbox
routes): an entry is stored first (idempotent by ``request_id``), then handed to the
outbox, which sends it when its account runs (``data/outbox.py``)."""

import uuid
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from hiscrm.items import epoch_ms
from hiscrm.master.api.errors import ApiError
from hiscrm.master.api.read_model import ReadModel
from hiscrm.master.data.outbox import Outbox
from hiscrm.master.data.outbox_entry import OutboxEntry, OutboxState, PageQuery, ReplyRefused
from hiscrm.master.data.routed import RoutingFailed
from hiscrm.master.data.store import Store
from hiscrm.replies import (
    MAX_TEXT_CHARS,
    REQUEST_ID_PATTERN,
    CommentReply,
    ItemRef,
    MessageReply,
    ReplyAction,
)

if TYPE_CHECKING:
    from hiscrm.master.data.command_router import CommandRouter

RequestId = Field(
    default=None,
    pattern=REQUEST_ID_PATTERN,
    description="yours, to make the request idempotent (made for you if left out)",
)


class MessageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    conversation_id: ItemRef
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    request_id: str | None = RequestId


class CommentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    content_id: ItemRef
    parent_id: ItemRef | None = None
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    request_id: str | None = RequestId


class OutboxEntryInfo(BaseModel):
    account_id: str
    request_id: str
    kind: str  # message, comment
    conversation_id: str | None = None
    content_id: str | None = None
    parent_id: str | None = None
    text: str
    state: OutboxState
    error: str | None
    item_id: str | None  # the platform's id of what it sent
    attempts: int
    created_at: int
    updated_at: int
    sent_at: int | None
    queued_at: int  # ms, when it last became queued (made, retried): expiry counts from it
    # In a cluster, the master that acted on this request: for a new reply, the account's
    # holder it goes to (None: no master holds it now); for a cancel or retry, the one that
    # did it. None on one host, and in reads of the outbox.
    node: str | None = None


class OutboxPage(BaseModel):
    items: list[OutboxEntryInfo]
    total: int
    limit: int
    offset: int
    next_offset: int | None


def info(entry: OutboxEntry, node: str | None = None) -> OutboxEntryInfo:
    return OutboxEntryInfo.model_validate({**entry.as_json(), "node": node})


class Replies:
    def __init__(self, read: ReadModel, store: Store, outbox: Outbox) -> None:
        self._read = read
        self._store = store
        self._outbox = outbox
        self.router: CommandRouter | None = None  # a cluster: to the account's master

    async def send(
        self, account_id: str, body: MessageRequest | CommentRequest
    ) -> tuple[OutboxEntryInfo, bool]:
        """The entry, and whether it was made now (False: the same request was made
        before)."""
        if account_id not in self._read.account_ids():
            raise ApiError(404, f"no account {account_id!r}")
        action: ReplyAction
        try:
            if isinstance(body, MessageRequest):
                action = MessageReply(conversation_id=body.conversation_id, text=body.text)
            else:
                action = CommentReply(
                    content_id=body.content_id, parent_id=body.parent_id, text=body.text
                )
        except ValueError as exc:
            raise ApiError(422, f"text: {_first_problem(exc)}") from None
        now = epoch_ms()
        entry = OutboxEntry(
            account_id=account_id,
            request_id=body.request_id or uuid.uuid4().hex,
            action=action,
            state=OutboxState.QUEUED,
            created_at=now,
            updated_at=now,
            queued_at=now,
        )
        try:
            stored, made = await self._store.outbox_create(entry)
        except ReplyRefused as exc:
            raise ApiError(exc.status, str(exc)) from None
        if made:
            self._outbox.add(stored)
        live = self._outbox.open.get((account_id, stored.request_id), stored)
        return info(live, self._holder(account_id)), made

    def _holder(self, account_id: str) -> str | None:
        """In a cluster, the master that sends the account's replies: this one, or the
        lease holder as last seen (None: nobody holds it now)."""
        router = self.router
        if router is None or router.holds(account_id):
            return self._here()
        return router.owner_of(account_id)

    def _here(self) -> str | None:
        return None if self.router is None else self.router.node_id

    async def entry(self, account_id: str, request_id: str) -> OutboxEntry:
        if account_id not in self._read.account_ids():
            raise ApiError(404, f"no account {account_id!r}")
        found = self._outbox.open.get((account_id, request_id))
        if found is None:
            found = await self._store.outbox_get(account_id, request_id)
        if found is None:
            raise ApiError(404, f"no reply {request_id!r} of account {account_id!r}")
        return found

    async def page(self, account_id: str, query: PageQuery, limit: int, offset: int) -> OutboxPage:
        if account_id not in self._read.account_ids():
            raise ApiError(404, f"no account {account_id!r}")
        entries, total = await self._store.outbox_page(account_id, query, limit, offset)
        live = [self._outbox.open.get((e.account_id, e.request_id), e) for e in entries]
        end = offset + len(live)
        return OutboxPage(
            items=[info(e) for e in live],
            total=total,
            limit=limit,
            offset=offset,
            next_offset=end if end < total else None,
        )

    async def cancel(self, account_id: str, request_id: str) -> OutboxEntryInfo:
        """Done by the master that sends the account's replies (maybe another)."""
        return await self._routed("reply.cancel", account_id, request_id) or (
            await self.cancel_here(account_id, request_id)
        )

    async def retry(self, account_id: str, request_id: str) -> OutboxEntryInfo:
        return await self._routed("reply.retry", account_id, request_id) or (
            await self.retry_here(account_id, request_id)
        )

    async def _routed(self, kind: str, account_id: str, request_id: str) -> OutboxEntryInfo | None:
        """In a cluster, for an account another master holds: its answer; else None."""
        router = self.router
        if router is None or router.holds(account_id):
            return None
        await self.entry(account_id, request_id)  # 404s first
        try:
            node, result = await router.request(account_id, kind, {"request_id": request_id})
        except RoutingFailed as exc:
            raise ApiError(exc.status, str(exc)) from None
        return OutboxEntryInfo.model_validate({**result, "node": node})

    async def cancel_here(self, account_id: str, request_id: str) -> OutboxEntryInfo:
        entry = await self.entry(account_id, request_id)
        try:
            return info(self._outbox.cancel(entry), self._here())
        except ReplyRefused as exc:
            raise ApiError(exc.status, str(exc)) from None

    async def retry_here(self, account_id: str, request_id: str) -> OutboxEntryInfo:
        entry = await self.entry(account_id, request_id)
        try:
            return info(self._outbox.retry(entry), self._here())
        except ReplyRefused as exc:
            raise ApiError(exc.status, str(exc)) from None


def _first_problem(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        found = errors()
        if found:
            return str(found[0].get("msg", exc))
    return str(exc)
