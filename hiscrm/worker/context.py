"""The ``ctx`` a platform's ``run`` receives for one account.

Platforms write what they find with ``ctx.upsert_<kind>(...)``, passing a model or a
mapping of its fields. Bad data is refused at this boundary: the upsert raises
:class:`InvalidItem` naming the problem (a time in seconds, a missing field), and the
error is logged, counted and reported to the master, once.

The same ``ctx`` is handed to ``send`` (see ``reply_send``), where ``ctx.request_id`` is
the id of the reply being sent. It is kept in a context variable that each send's task
sets for itself (an asyncio task runs in its own copy of the context), so sends under way
together, and ``run`` beside them (None there), each see their own.
"""

from collections.abc import Callable, Mapping
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any, NoReturn, TypeVar

from pydantic import ValidationError
from structlog.typing import FilteringBoundLogger

from hiscrm.items import (
    ITEM_MODELS,
    URGENT_KINDS,
    AnyItem,
    Comment,
    Content,
    Conversation,
    Message,
    Notification,
)
from hiscrm.models import AccountSpec
from hiscrm.worker.account_data import AccountData, InvalidItem
from hiscrm.worker.error_reporter import ErrorReporter

ItemT = TypeVar("ItemT", bound=AnyItem)

_REQUEST_ID: ContextVar[str | None] = ContextVar("hiscrm_request_id", default=None)


def set_request_id(request_id: str) -> None:
    """Called by a send's own task, before it calls the platform: ``ctx.request_id`` in
    that task (and in tasks it starts) from now on."""
    _REQUEST_ID.set(request_id)


class AccountContext:
    def __init__(
        self,
        account: AccountSpec,
        log: FilteringBoundLogger,
        data: AccountData,
        on_change: Callable[[str, bool], None],
        errors: ErrorReporter,
    ) -> None:
        self._account = account
        self._options = MappingProxyType(account.options)
        self._log = log
        self._data = data
        self._on_change = on_change
        self._errors = errors
        self._progressed = False
        self.last_progress_at: int | None = None  # ms, as of the last heartbeat

    @property
    def account(self) -> AccountSpec:
        return self._account

    @property
    def options(self) -> Mapping[str, Any]:
        return self._options

    @property
    def log(self) -> FilteringBoundLogger:
        return self._log

    @property
    def request_id(self) -> str | None:
        """In ``send``: the request id of the reply being sent; None in ``run``."""
        return _REQUEST_ID.get()

    def progress(self) -> None:
        self._progressed = True  # stamped by the next heartbeat: cheap enough per upsert

    def stamp_progress(self, now_ms: int) -> int | None:
        """Called with each heartbeat: the time of the platform's last progress."""
        if self._progressed:
            self._progressed = False
            self.last_progress_at = now_ms
        return self.last_progress_at

    def pending(self) -> int:
        """Changes of this account not yet acknowledged by the master. A platform that
        produces faster than the store takes can watch this and slow down."""
        return self._data.unacked

    def count(self, kind: str) -> int:
        """How many items of ``kind`` this account has (in the store or seen since)."""
        return self._data.count(kind)

    # --- writing what the platform found -------------------------------------------------

    def upsert_conversation(self, item: Conversation | Mapping[str, Any]) -> bool:
        return self._record(self._valid(Conversation, item))

    def upsert_message(self, item: Message | Mapping[str, Any]) -> bool:
        return self._record(self._valid(Message, item))

    def upsert_comment(self, item: Comment | Mapping[str, Any]) -> bool:
        return self._record(self._valid(Comment, item))

    def upsert_content(self, item: Content | Mapping[str, Any]) -> bool:
        return self._record(self._valid(Content, item))

    def upsert_notification(self, item: Notification | Mapping[str, Any]) -> bool:
        return self._record(self._valid(Notification, item))

    def upsert_item(self, kind: str, item: AnyItem | Mapping[str, Any]) -> bool:
        """Any kind of item, by its kind's name (the registry ``hiscrm.items.KINDS``)."""
        model = ITEM_MODELS.get(kind)
        if model is None:
            known = ", ".join(ITEM_MODELS)
            self._refuse(InvalidItem(f"unknown kind of item {kind!r} (known: {known})"))
        return self._record(self._valid(model, item))

    def upsert(self, item: AnyItem) -> bool:
        """Record an item (a model instance of any kind); True if it changed anything (a
        no-op sends nothing)."""
        kind = getattr(item, "kind", None)
        model = ITEM_MODELS.get(kind) if isinstance(kind, str) else None
        if model is None or not isinstance(item, model):
            self._refuse(InvalidItem(f"not an item: {type(item).__name__} (use upsert_item)"))
        return self._record(self._valid(model, item))

    def _record(self, item: AnyItem) -> bool:
        try:
            version = self._data.upsert(item)
        except InvalidItem as exc:
            self._refuse(exc)
        self.progress()
        if version:
            urgent = (
                version == 1
                and item.kind in URGENT_KINDS
                and getattr(item, "direction", "") == "inbound"
            )
            self._on_change(self._account.id, urgent)
        return bool(version)

    def _valid(self, model: type[ItemT], item: ItemT | Mapping[str, Any]) -> ItemT:
        if isinstance(item, model):
            # Checked again: model_construct() and friends make instances nobody validated,
            # which the master would refuse, holding up every later change of the account.
            item = item.__dict__
        try:
            # The validator itself (what model_validate calls), without the wrapper.
            valid: ItemT = model.__pydantic_validator__.validate_python(item)
            return valid
        except ValidationError as exc:
            problems = "; ".join(
                f"{_where(e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
                for e in exc.errors(include_url=False)
            )
            kind = model.model_fields["kind"].default
            item_id = item.get("id") if isinstance(item, Mapping) else None
            self._refuse(InvalidItem(f"invalid {kind} {item_id!r}: {problems}"))

    def _refuse(self, exc: InvalidItem) -> NoReturn:
        self._errors.report("platform data", exc, account_id=self._account.id)
        exc.reported = True
        raise exc


def _where(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "item"
