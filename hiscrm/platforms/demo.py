"""The built-in demo platform: pretends to watch an account and logs what it sees.

Options: ``rate`` (checks per second, default 0.5), ``seed`` (for repeatable activity).
"""

import asyncio
import random
from collections.abc import Mapping
from typing import Any

from hiscrm.platforms.base import PlatformContext


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
        rng = random.Random(f"{_number(ctx.options, 'seed', 0)}:{ctx.account.id}")
        checks = 0
        while True:
            await asyncio.sleep(rng.expovariate(rate))
            checks += 1
            ctx.progress()
            ctx.log.info("demo check", checks=checks, new_messages=rng.randint(0, 2))
