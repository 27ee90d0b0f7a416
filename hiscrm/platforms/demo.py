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
"""

import asyncio
import random
from collections.abc import Mapping
from typing import Any

from hiscrm.items import epoch_ms
from hiscrm.platforms.base import PlatformContext

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
        for n, conversation in enumerate(self.conversations):
            self.ctx.upsert_conversation(
                {
                    "id": conversation,
                    "title": f"customer {n}",
                    "participants": ["me", f"customer-{n}"],
                }
            )
        for n, content in enumerate(self.contents):
            self.ctx.upsert_content(
                {"id": content, "title": f"post {n}", "url": f"https://example.invalid/{content}"}
            )

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
        n = self.conversations.index(conversation)
        self.ctx.upsert_conversation(
            {
                "id": conversation,
                "title": f"customer {n}",
                "participants": ["me", customer],
                "last_message_at": now,
            }
        )

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
        n = self.contents.index(content)
        self.ctx.upsert_content(
            {
                "id": content,
                "title": f"post {n}",
                "url": f"https://example.invalid/{content}",
                "views": stats[0],
                "likes": stats[1],
                "comment_count": stats[2],
            }
        )

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
