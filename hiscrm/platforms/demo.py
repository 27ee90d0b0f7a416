"""The built-in demo platform: a generator of plausible account activity.

Per account it keeps a few conversations with inbound and outbound messages, a few
published contents collecting comments and changing stats, and notifications. Options:

* ``rate``: events per second (default 0.5); high rates are produced in batches.
* ``seed``: makes the activity repeatable (default 0).
* ``conversations``, ``contents``: how many of each the account has (default 5 and 3).
* ``max_events``: stop producing after this many events (default: never); the account
  then stays idle, as a quiet account does.

After a restart it goes on numbering where the account left off (``ctx.count``), so it
adds new items rather than rewriting old ones.

It sends replies as a real platform would, minus the network: ``send`` upserts the sent
message (``out-<request id>``, outbound, from ``me``) and the conversation's new
``last_message_at``, or the sent comment (``reply-<request id>``, outbound, by ``me``)
and the content's comment count, and returns the item's id. The sent item then syncs
like any other, so replies in the embedded default go the whole way round.
"""

import asyncio
import random
from collections.abc import Mapping
from typing import Any

from hiscrm.items import epoch_ms
from hiscrm.platforms.base import PlatformContext
from hiscrm.replies import CommentReply, MessageReply, ReplyAction

WORDS = (
    "hello", "thanks", "price", "order", "when", "shipping", "great", "video", "love",
    "question", "how", "much", "available", "tomorrow", "link", "please", "size", "colour",
    "discount", "follow", "new", "post",
)  # fmt: skip
BATCH_INTERVAL_S = 0.01  # at high rates, events are produced this often in batches
IDLE_PROGRESS_S = 1.0  # an idle demo account reports progress this often


def _number(options: Mapping[str, Any], key: str, default: float) -> float:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"demo option {key!r} must be a number, got {value!r}")
    return float(value)


class DemoPlatform:
    def __init__(self) -> None:
        self._generator: _Generator | None = None

    async def send(self, ctx: PlatformContext, action: ReplyAction) -> str | None:
        generator = self._generator
        if generator is None:  # the worker calls send only while run is awaited
            raise RuntimeError("the demo platform is not running")
        request_id = ctx.request_id
        if request_id is None:
            raise RuntimeError("send called without a request id")
        match action:
            case MessageReply():
                return generator.send_message(action, request_id)
            case CommentReply():
                return generator.send_comment(action, request_id)

    async def run(self, ctx: PlatformContext) -> None:
        rate = _number(ctx.options, "rate", 0.5)
        if rate <= 0:
            raise ValueError(f"demo option 'rate' must be positive, got {rate!r}")
        conversations = int(_number(ctx.options, "conversations", 5))
        contents = int(_number(ctx.options, "contents", 3))
        max_events = _number(ctx.options, "max_events", float("inf"))
        seed = _number(ctx.options, "seed", 0)
        generator = _Generator(
            ctx, random.Random(f"{seed}:{ctx.account.id}"), conversations, contents
        )
        generator.setup()
        self._generator = generator
        produced = 0.0
        interval = max(1 / rate, BATCH_INTERVAL_S)
        per_tick = rate * interval
        credit = 0.0
        while produced < max_events:
            await asyncio.sleep(interval)
            credit += per_tick
            while credit >= 1 and produced < max_events:
                credit -= 1
                produced += 1
                generator.event()
            ctx.progress()
        ctx.log.info("demo reached max_events; idle from now on", events=int(produced))
        while True:  # legitimately quiet: it says it is alive, so it is not stale
            ctx.progress()
            await asyncio.sleep(IDLE_PROGRESS_S)


class _Generator:
    def __init__(
        self, ctx: PlatformContext, rng: random.Random, conversations: int, contents: int
    ) -> None:
        self.ctx = ctx
        self.rng = rng
        self.conversations = [f"conv-{n}" for n in range(conversations)]
        self.contents = [f"content-{n}" for n in range(contents)]
        self.messages = ctx.count("message")
        self.comments = ctx.count("comment")
        self.notifications = ctx.count("notification")
        self.stats: dict[str, list[int]] = {c: [0, 0, 0] for c in self.contents}

    def text(self) -> str:
        return " ".join(self.rng.choice(WORDS) for _ in range(self.rng.randint(2, 12)))

    def setup(self) -> None:
        """The account's conversations and contents, while it has fewer than it keeps (a
        new account); after a restart they are known, and writing them again would reset
        what they learned (a conversation's ``last_message_at``)."""
        if self.ctx.count("conversation") < len(self.conversations):
            for conversation in self.conversations:
                self.ctx.upsert_conversation(_conversation(conversation))
        if self.ctx.count("content") < len(self.contents):
            for content in self.contents:
                self.ctx.upsert_content(self._content(content))

    def _content(self, content: str) -> dict[str, Any]:
        views, likes, comments = self.stats.get(content, (0, 0, 0))
        return {
            "id": content,
            "title": f"post {content.removeprefix('content-')}",
            "url": f"https://example.invalid/{content}",
            "views": views,
            "likes": likes,
            "comment_count": comments,
        }

    def send_message(self, action: MessageReply, request_id: str) -> str:
        message_id = f"out-{request_id}"
        now = epoch_ms()
        self.ctx.upsert_message(
            {
                "id": message_id,
                "conversation_id": action.conversation_id,
                "direction": "outbound",
                "sender_id": "me",
                "text": action.text,
                "sent_at": now,
            }
        )
        self.ctx.upsert_conversation(_conversation(action.conversation_id, now))
        return message_id

    def send_comment(self, action: CommentReply, request_id: str) -> str:
        comment_id = f"reply-{request_id}"
        self.ctx.upsert_comment(
            {
                "id": comment_id,
                "content_id": action.content_id,
                "parent_id": action.parent_id,
                "direction": "outbound",
                "author_id": "me",
                "text": action.text,
                "created_at": epoch_ms(),
            }
        )
        if action.content_id in self.stats:  # one of the contents it keeps up to date
            self.stats[action.content_id][2] += 1
            self.ctx.upsert_content(self._content(action.content_id))
        return comment_id

    def event(self) -> None:
        roll = self.rng.random()
        if roll < 0.6:
            self.message(inbound=roll < 0.4)
        elif roll < 0.8:
            self.comment()
        elif roll < 0.9:
            self.content_stats()
        else:
            self.notification()

    def message(self, inbound: bool) -> None:
        conversation = self.rng.choice(self.conversations)
        customer = conversation.replace("conv", "customer")
        now = epoch_ms()
        self.ctx.upsert_message(
            {
                "id": f"msg-{self.messages}",
                "conversation_id": conversation,
                "direction": "inbound" if inbound else "outbound",
                "sender_id": customer if inbound else "me",
                "sender_name": customer if inbound else "",
                "text": self.text(),
                "sent_at": now,
            }
        )
        self.messages += 1
        self.ctx.upsert_conversation(_conversation(conversation, now))

    def comment(self) -> None:
        content = self.rng.choice(self.contents)
        self.ctx.upsert_comment(
            {
                "id": f"comment-{self.comments}",
                "content_id": content,
                "author_id": f"fan-{self.rng.randint(1, 50)}",
                "text": self.text(),
                "created_at": epoch_ms(),
            }
        )
        self.comments += 1
        self.stats[content][2] += 1
        self.content_stats(content)

    def content_stats(self, content: str | None = None) -> None:
        content = content or self.rng.choice(self.contents)
        stats = self.stats[content]
        stats[0] += self.rng.randint(1, 40)
        stats[1] += self.rng.randint(0, 5)
        self.ctx.upsert_content(self._content(content))

    def notification(self) -> None:
        self.ctx.upsert_notification(
            {
                "id": f"note-{self.notifications}",
                "category": self.rng.choice(["follow", "like", "mention", "system"]),
                "text": self.text(),
                "created_at": epoch_ms(),
            }
        )
        self.notifications += 1


def _conversation(conversation: str, last_message_at: int | None = None) -> dict[str, Any]:
    """A demo conversation ``conv-<n>`` with ``customer-<n>``, as the demo upserts it."""
    n = conversation.removeprefix("conv-")
    return {
        "id": conversation,
        "title": f"customer {n}",
        "participants": ["me", f"customer-{n}"],
        "last_message_at": last_message_at,
    }
