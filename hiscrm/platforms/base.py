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
"""

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from structlog.typing import FilteringBoundLogger

from hiscrm.items import Comment, Content, Conversation, Message, Notification
from hiscrm.models import AccountSpec


class PlatformContext(Protocol):
    """Handed to ``run``: the account, its options and a logger bound to the account."""

    @property
    def account(self) -> AccountSpec: ...

    @property
    def options(self) -> Mapping[str, Any]: ...

    @property
    def log(self) -> FilteringBoundLogger: ...

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
