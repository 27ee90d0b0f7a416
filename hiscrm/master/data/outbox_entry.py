"""An outbox entry: one reply an agent asked for, and its states.

    queued ──send──▶ sending ──▶ sent | failed
       │                │
       │                └─(its worker died, or the account left it, mid-send)─▶ unknown
       ├─(still queued after expire_after_s)─▶ expired
       └─(DELETE)─▶ cancelled
    failed | unknown | expired ──(retry, by an operator)──▶ queued
    unknown ──(the worker's answer arrives after all)──▶ sent | failed
    sending ──(the worker did not hand it to the platform)──▶ queued

``unknown`` is never sent again by itself (the platform may have sent it), unless the
platform says its sends are idempotent. ``move`` is the one place a state changes.
Expiry counts from ``queued_at``, when the entry last became queued (made, retried,
queued again), so a reply retried long after it was made gets its full time again.
"""

import hashlib
import json
from enum import StrEnum
from typing import Any, Literal

import msgspec
from msgspec.structs import replace
from pydantic import TypeAdapter

from hiscrm.replies import ReplyAction


class OutboxState(StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    UNKNOWN = "unknown"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


ALLOWED: dict[OutboxState, frozenset[OutboxState]] = {
    OutboxState.QUEUED: frozenset(
        {OutboxState.SENDING, OutboxState.EXPIRED, OutboxState.CANCELLED}
    ),
    OutboxState.SENDING: frozenset(
        {OutboxState.SENT, OutboxState.FAILED, OutboxState.UNKNOWN, OutboxState.QUEUED}
    ),
    OutboxState.SENT: frozenset(),
    OutboxState.FAILED: frozenset({OutboxState.QUEUED}),
    # A late answer of the worker tells what became of it after all.
    OutboxState.UNKNOWN: frozenset({OutboxState.QUEUED, OutboxState.SENT, OutboxState.FAILED}),
    OutboxState.EXPIRED: frozenset({OutboxState.QUEUED}),
    OutboxState.CANCELLED: frozenset(),
}
OPEN = frozenset({OutboxState.QUEUED, OutboxState.SENDING})  # the master still acts on these

ACTION: TypeAdapter[ReplyAction] = TypeAdapter(ReplyAction)


class BadMove(Exception):
    """A state change the rules do not allow (e.g. cancelling what is being sent)."""


def body_hash(action: ReplyAction) -> str:
    """What tells two requests under one ``request_id`` apart."""
    canonical = json.dumps(action.model_dump(mode="json"), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


class OutboxEntry(msgspec.Struct, frozen=True):
    account_id: str
    request_id: str
    action: ReplyAction
    state: OutboxState
    created_at: int  # ms
    updated_at: int  # ms
    attempts: int = 0  # times it was handed to a worker
    error: str | None = None  # why failed, unknown or expired
    item_id: str | None = None  # the platform's id of what it sent
    sent_at: int | None = None
    queued_at: int | None = None  # ms, when it last became queued; None: when it was made

    @property
    def target(self) -> str:
        return self.action.target

    @property
    def queued_since(self) -> int:
        """When it last became queued (what expiry counts from)."""
        return self.created_at if self.queued_at is None else self.queued_at

    def move(
        self,
        new: OutboxState,
        at: int,
        *,
        error: str | None = None,
        item_id: str | None = None,
    ) -> "OutboxEntry":
        """This entry in state ``new``; BadMove if the rules do not allow it."""
        if new not in ALLOWED[self.state]:
            raise BadMove(f"a reply that is {self.state} cannot become {new}")
        return replace(
            self,
            state=new,
            updated_at=at,
            attempts=self.attempts + (1 if new is OutboxState.SENDING else 0),
            error=error,
            item_id=item_id if new is OutboxState.SENT else self.item_id,
            sent_at=at if new is OutboxState.SENT else self.sent_at,
            queued_at=at if new is OutboxState.QUEUED else self.queued_at,
        )

    def as_json(self) -> dict[str, Any]:
        """The entry as the API serves it (and ``reply.state`` events carry it)."""
        return {
            "account_id": self.account_id,
            "request_id": self.request_id,
            **self.action.model_dump(mode="json"),
            "state": str(self.state),
            "error": self.error,
            "item_id": self.item_id,
            "attempts": self.attempts,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "sent_at": self.sent_at,
            "queued_at": self.queued_since,
        }


class PageQuery(msgspec.Struct, frozen=True):
    """Which of an account's entries a page shows: ``state``, made at or after ``since``
    and before ``until`` (ms), in the order they were made (``asc``) or newest first."""

    state: str | None = None
    since: int | None = None
    until: int | None = None
    order: Literal["asc", "desc"] = "desc"


class ReplyRefused(Exception):
    """A reply request the outbox does not take; ``status`` is the HTTP answer (404 no
    such account or entry, 409 a conflict, 422 a target the account does not have)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
