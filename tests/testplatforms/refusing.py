"""A demo platform that refuses each reply once: the first ``send`` of a request id raises,
and a retry of the same request id is sent (the reply ``failed`` with its reason, then
``sent`` after an operator's retry)."""

from hiscrm.platforms.base import PlatformContext
from hiscrm.platforms.demo import DemoPlatform
from hiscrm.replies import ReplyAction

REFUSAL = "the platform refused the reply: rate limited, try again later"


class RefusesOnce(DemoPlatform):
    def __init__(self) -> None:
        super().__init__()
        self.refused: set[str | None] = set()

    async def send(self, ctx: PlatformContext, action: ReplyAction) -> str | None:
        if ctx.request_id not in self.refused:
            self.refused.add(ctx.request_id)
            raise RuntimeError(REFUSAL)
        return await super().send(ctx, action)
