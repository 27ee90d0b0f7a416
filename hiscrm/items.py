"""What platforms find: conversations, messages, comments, contents, notifications.

One canonical id per item everywhere (worker memory, the wire, SQLite, the API):
``(account id, kind, platform item id)``. Every time is an integer number of
milliseconds since the epoch; a value that looks like seconds (or microseconds) is
rejected with an error that says so. These models hold what the worker observes; fields
the master owns (``is_read``, ``read_at``) live only in the store.
"""

import hashlib
import time
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, get_origin

import msgspec
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt

MS_MIN = 100_000_000_000  # 1973-03-03 in ms; a current time in seconds is ~1.7e9
MS_MAX = 10_000_000_000_000  # year 2286 in ms; beyond that it is µs or ns


def check_epoch_ms(value: int) -> int:
    if value < MS_MIN:
        raise ValueError(
            f"{value} looks like seconds since the epoch; times are integer milliseconds "
            f"(did you mean {value * 1000}?)"
        )
    if value > MS_MAX:
        raise ValueError(
            f"{value} looks like microseconds or nanoseconds; times are integer milliseconds"
        )
    return value


EpochMs = Annotated[StrictInt, AfterValidator(check_epoch_ms)]


def epoch_ms() -> int:
    """Now, in the unit of every time in hiscrm: integer milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


def _check_item_id(value: str) -> str:
    """An item id is a path segment of the API (``/accounts/A/messages/{id}``): no '/', no
    control character or lone surrogate, not '.' or '..' (clients drop those segments)."""
    if "/" in value or value in (".", ".."):
        raise ValueError(
            f"{value!r} cannot be an item id: ids are URL path segments, so no '/' and not "
            "'.' or '..'; encode the platform's id, e.g. urllib.parse.quote(id, safe='')"
        )
    if not value.isprintable():  # rare: find out whether it is one we refuse
        for position, char in enumerate(value):
            if char < " " or "\x7f" <= char <= "\x9f" or "\ud800" <= char <= "\udfff":
                raise ValueError(
                    f"{value!r} cannot be an item id: {char!r} at position {position} is a "
                    "control character or a lone surrogate"
                )
    return value


ItemId = Annotated[str, Field(min_length=1, max_length=256), AfterValidator(_check_item_id)]
Direction = Literal["inbound", "outbound"]
MAX_INT = 2**63 - 1  # what SQLite stores
Count = Annotated[StrictInt, Field(ge=0, le=MAX_INT)]


class _Item(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: ItemId
    kind: str  # each model narrows it to its own tag


class Conversation(_Item):
    kind: Literal["conversation"] = "conversation"
    title: str = ""
    participants: list[str] = Field(default_factory=list)
    last_message_at: EpochMs | None = None


class Message(_Item):
    kind: Literal["message"] = "message"
    conversation_id: ItemId
    direction: Direction
    sender_id: str
    sender_name: str = ""
    text: str
    sent_at: EpochMs


class Comment(_Item):
    kind: Literal["comment"] = "comment"
    content_id: ItemId
    parent_id: str | None = None
    direction: Direction = "inbound"
    author_id: str
    author_name: str = ""
    text: str
    created_at: EpochMs


class Content(_Item):
    kind: Literal["content"] = "content"
    title: str = ""
    url: str = ""
    published_at: EpochMs | None = None
    views: Count = 0
    likes: Count = 0
    comment_count: Count = 0


class Notification(_Item):
    kind: Literal["notification"] = "notification"
    category: str
    text: str
    created_at: EpochMs


# --- the registry of kinds -----------------------------------------------------------------
# Everything the program knows about a kind is here: the store's tables and indexes, the
# API's collections, filters, sorts and schemas, the retention settings and the sync's
# urgency are derived from these entries. Adding a kind is one model above and one entry
# below; adding a field is one line in its model.


class MasterField(msgspec.Struct, frozen=True):
    """A field the master owns (the store keeps it across syncs; workers never set it)."""

    name: str
    sql: str  # column declaration
    annotation: Any  # its type in the API


READ_MARKS = (
    MasterField("is_read", "INTEGER NOT NULL DEFAULT 0", bool),
    MasterField("read_at", "INTEGER", int | None),
)


class Kind(msgspec.Struct, frozen=True):
    name: str  # "message"; an item's ``kind``
    collection: str  # "messages": the store's table, the API's path, the retention key
    model: type["_Item"]
    time_field: str  # what retention and default ordering go by
    indexes: tuple[tuple[str, ...], ...] = ()  # columns after account_id, each an index
    filters: tuple[str, ...] = ()  # equality filters of the API
    sorts: tuple[str, ...] = ()  # what the API may sort by, besides the time field
    master_owned: tuple[MasterField, ...] = ()
    urgent: bool = False  # a new inbound item is synced at once, not with the next flush

    @property
    def readable(self) -> bool:
        """Has read marks (``POST .../read`` and the ``is_read`` filter)."""
        return any(f.name == "is_read" for f in self.master_owned)

    @property
    def sort_columns(self) -> tuple[str, ...]:
        """What a collection may be sorted by."""
        return (self.time_field, "synced_at", "version", "id", *self.sorts)

    @property
    def observed_fields(self) -> list[str]:
        """The model's fields the worker observes and the store keeps as columns."""
        return [name for name in self.model.model_fields if name not in ("id", "kind")]

    @property
    def json_fields(self) -> frozenset[str]:
        """Fields stored as JSON text (lists and mappings)."""
        return frozenset(
            name
            for name, field in self.model.model_fields.items()
            if get_origin(field.annotation) in (list, dict)
        )


KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        Kind(
            "conversation",
            "conversations",
            Conversation,
            "last_message_at",
            indexes=(("last_message_at",),),
            sorts=("title",),
        ),
        Kind(
            "message",
            "messages",
            Message,
            "sent_at",
            # Each index costs every write (~30% for a third one on messages); unread
            # filters ride on the time index.
            indexes=(("sent_at",), ("conversation_id", "sent_at")),
            filters=("conversation_id", "direction", "sender_id"),
            master_owned=READ_MARKS,
            urgent=True,
        ),
        Kind(
            "comment",
            "comments",
            Comment,
            "created_at",
            indexes=(("created_at",), ("content_id", "created_at")),
            filters=("content_id", "direction", "author_id"),
            master_owned=READ_MARKS,
            urgent=True,
        ),
        Kind(
            "content",
            "contents",
            Content,
            "published_at",
            indexes=(("published_at",),),
            sorts=("views", "likes", "comment_count"),
        ),
        Kind(
            "notification",
            "notifications",
            Notification,
            "created_at",
            indexes=(("created_at",),),
            filters=("category",),
        ),
    )
}
BY_COLLECTION: dict[str, Kind] = {kind.collection: kind for kind in KINDS.values()}

# Derived views, for code that needs only one fact.
ITEM_MODELS: dict[str, type["_Item"]] = {name: kind.model for name, kind in KINDS.items()}
COLLECTIONS: dict[str, str] = {kind.collection: name for name, kind in KINDS.items()}
URGENT_KINDS = frozenset(name for name, kind in KINDS.items() if kind.urgent)

# Any item, as a type. Validation picks the model by ``kind`` (a discriminated union built
# from the registry); the type checker sees the common base.
AnyItem = _Item
if TYPE_CHECKING:
    Item = _Item
else:
    Item = Annotated[Union[tuple(ITEM_MODELS.values())], Field(discriminator="kind")]  # noqa: UP007


def kind_of(model: type[_Item]) -> str:
    """The ``kind`` tag of an item model."""
    return str(model.model_fields["kind"].default)


def _check_registry() -> None:
    for name, kind in KINDS.items():
        if kind_of(kind.model) != name:
            raise AssertionError(f"kind {name!r}: its model says {kind_of(kind.model)!r}")
        fields = set(kind.model.model_fields)
        named = {kind.time_field, *kind.filters, *kind.sorts, *(c for i in kind.indexes for c in i)}
        if not named <= fields:
            raise AssertionError(f"kind {name!r} names fields its model lacks: {named - fields}")


_check_registry()


def item_hash(item_json: bytes) -> str:
    """A short content hash of an item's JSON; equal hashes mean nothing changed."""
    return hashlib.blake2b(item_json, digest_size=8).hexdigest()
