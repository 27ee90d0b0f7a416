"""What a platform plugin sees and provides.

A platform is a class whose instances have ``async def run(self, ctx)``. The worker makes
one instance per account and awaits ``run`` for as long as the account is assigned to it;
if ``run`` raises (anything, ``SystemExit`` included) or returns, the worker logs it,
reports it to the master and starts a fresh instance after a backoff. A class that cannot
be imported, or raises the first time it is constructed, makes its accounts ``failed``
in that worker process; the worker's other accounts run on.

What it finds goes through ``ctx.upsert_<kind>(item)``, with a model from
``hiscrm.items`` or a mapping of its fields; each returns True if it changed anything. An
invalid item raises ``InvalidItem`` (already logged and reported).

A platform that can reply also has ``async def send(self, ctx, action) -> str | None``
(see :class:`Sender`). The worker calls it on the instance whose ``run`` is awaited, in a
task of its own beside ``run`` (so a slow send holds up neither ``run`` nor other
accounts), once per reply, after checking that the target is this account's: a
:class:`~hiscrm.replies.MessageReply` goes to a conversation the account holds (one the
platform upserted as a conversation, or that is in the store), a
:class:`~hiscrm.replies.CommentReply` to a content it holds, answering (``parent_id``) a
comment of that content. ``ctx`` is the account's ``ctx``, with ``ctx.request_id`` set to
the reply's request id. ``send`` returns the platform's id of what it sent, if it knows
it, and upserts the sent item (``direction="outbound"``) as it would any other, so the
sent message syncs back like everything else (the built-in ``demo`` does both). What it
raises (anything but the worker's own cancellation) makes the reply ``failed`` with the
error, logged and reported as ``worker:error`` (source ``send``); the account runs on.
An account that stops while a send is under way cancels it; that reply is not reported
at all by the worker (the master marks it ``unknown``: it may have gone out).

``sends_idempotent = True`` on the class says that sending the same reply again (same
``ctx.request_id``) cannot send it twice, for instance because the platform hands the
request id to the remote side as its idempotency key. Only then does the master send an
``unknown`` reply again by itself.
"""

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from structlog.typing import FilteringBoundLogger

from hiscrm.items import Comment, Content, Conversation, Message, Notification
from hiscrm.models import AccountSpec
from hiscrm.replies import ReplyAction


class PlatformContext(Protocol):
    """Handed to ``run``: the account, its options and a logger bound to the account."""

    @property
    def account(self) -> AccountSpec: ...

    @property
    def options(self) -> Mapping[str, Any]: ...

    @property
    def log(self) -> FilteringBoundLogger: ...

    @property
    def request_id(self) -> str | None:
        """In ``send``: the request id of the reply being sent (the same id again is the
        same reply). None in ``run``."""

    def progress(self) -> None:
        """Say the account is alive and doing its work: call it whenever the platform has
        done a round of it (a poll, even one that found nothing). Upserts count as
        progress too. An account without progress for ``[sync] stale_after_s`` is shown
        stale, however many empty syncs its worker sends; a legitimately quiet platform
        calls this so it is not."""

    def count(self, kind: str) -> int:
        """How many items of ``kind`` (``"message"``, …) the account has."""

    def pending(self) -> int:
        """Changes not yet acknowledged by the master (a platform may pace itself by it)."""

    def upsert_item(self, kind: str, item: Mapping[str, Any]) -> bool:
        """Any kind of item by its kind's name; the ``upsert_<kind>`` methods below are the
        same for the built-in kinds."""

    def upsert_conversation(self, item: Conversation | Mapping[str, Any]) -> bool: ...

    def upsert_message(self, item: Message | Mapping[str, Any]) -> bool: ...

    def upsert_comment(self, item: Comment | Mapping[str, Any]) -> bool: ...

    def upsert_content(self, item: Content | Mapping[str, Any]) -> bool: ...

    def upsert_notification(self, item: Notification | Mapping[str, Any]) -> bool: ...


@runtime_checkable
class Platform(Protocol):
    async def run(self, ctx: PlatformContext) -> None: ...


class Sender(Protocol):
    """A platform that can send replies (``send`` is optional: a platform without it
    makes every reply of its accounts ``failed``, "platform cannot send")."""

    sends_idempotent: bool  # optional class attribute, False if absent (see above)

    async def send(self, ctx: PlatformContext, action: ReplyAction) -> str | None:
        """Send ``action``; the platform's id of the sent item, if known."""
