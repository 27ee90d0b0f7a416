"""Replies: what an agent asks a platform to send (a message in a conversation, a comment
on a content), shared by the API, the master's outbox, the pipe and platforms.

A platform sends with ``async def send(self, ctx, action) -> str | None`` (returning the
platform's id of what it sent, if it knows it); ``action`` is one of the models here.
"""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_TEXT_CHARS = 20_000  # a reply longer than this is refused (422)
REQUEST_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"

ItemRef = Annotated[str, Field(min_length=1, max_length=256)]


def _text_usable(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty or only spaces")
    if "\0" in text:
        raise ValueError("must not contain a NUL character")
    return text


class _Action(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)

    @field_validator("text")
    @classmethod
    def _text(cls, text: str) -> str:
        return _text_usable(text)


class MessageReply(_Action):
    """A private message into one of the account's conversations."""

    kind: Literal["message"] = "message"
    conversation_id: ItemRef

    @property
    def target(self) -> str:
        """What replies are ordered by: one at a time per conversation."""
        return f"conversation:{self.conversation_id}"


class CommentReply(_Action):
    """A comment on one of the account's contents, answering ``parent_id`` if set."""

    kind: Literal["comment"] = "comment"
    content_id: ItemRef
    parent_id: ItemRef | None = None

    @property
    def target(self) -> str:
        return f"content:{self.content_id}"


ReplyAction = Annotated[MessageReply | CommentReply, Field(discriminator="kind")]
