"""What platforms find: conversations, messages, comments, contents, notifications.

One canonical id per item everywhere (worker memory, the wire, SQLite, the API):
``(account id, kind, platform item id)``. Every time is an integer number of
milliseconds since the epoch; a value that looks like seconds (or microseconds) is
rejected with an error that says so. These models hold what the worker observes; fields
the master owns (``is_read``, ``read_at``) live only in the store.
"""

import hashlib
import time
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt

MS_MIN = 100_000_000_000  # 1973-03-03 in ms; a current time in seconds is ~1.7e9
MS_MAX = 10_000_000_000_000  # year 2286 in ms; beyond that it is µs or ns


def _check_epoch_ms(value: int) -> int:
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


EpochMs = Annotated[StrictInt, AfterValidator(_check_epoch_ms)]


def epoch_ms() -> int:
    """Now, in the unit of every time in hiscrm: integer milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


ItemId = Annotated[str, Field(min_length=1, max_length=256)]
Direction = Literal["inbound", "outbound"]
MAX_INT = 2**63 - 1  # what SQLite stores
Count = Annotated[StrictInt, Field(ge=0, le=MAX_INT)]


class _Item(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: ItemId


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


AnyItem = Conversation | Message | Comment | Content | Notification
Item = Annotated[AnyItem, Field(discriminator="kind")]

ITEM_MODELS: dict[str, type[AnyItem]] = {
    "conversation": Conversation,
    "message": Message,
    "comment": Comment,
    "content": Content,
    "notification": Notification,
}
# The API and the store name collections in the plural.
COLLECTIONS: dict[str, str] = {
    "conversations": "conversation",
    "messages": "message",
    "comments": "comment",
    "contents": "content",
    "notifications": "notification",
}
# Inbound items of these kinds are synced at once, not with the next regular flush.
URGENT_KINDS = frozenset({"message", "comment"})


def item_hash(item_json: bytes) -> str:
    """A short content hash of an item's JSON; equal hashes mean nothing changed."""
    return hashlib.blake2b(item_json, digest_size=8).hexdigest()
