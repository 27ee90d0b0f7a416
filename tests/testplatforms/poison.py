"""An account that kills the workers it runs in while a file exists, and runs as the demo
once the file is gone (a poison account that an operator has fixed, ready to release)."""

import asyncio
import os
from pathlib import Path

from hiscrm.platforms.base import PlatformContext
from hiscrm.platforms.demo import DemoPlatform


class PoisonWhileFlag(DemoPlatform):
    """Options: ``flag`` (a path): while it exists, the worker dies (``os._exit(3)``)
    ``after_s`` (default 0.5) after the account starts; the demo's options besides."""

    async def run(self, ctx: PlatformContext) -> None:
        if Path(str(ctx.options["flag"])).exists():
            await asyncio.sleep(float(ctx.options.get("after_s", 0.5)))
            os._exit(3)
        await super().run(ctx)
