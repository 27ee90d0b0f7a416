"""A platform for cluster tests: each running task writes down, in
``<record_dir>/<account>.runs``, which master's worker runs it (``HISCRM_TEST_NODE``, set
in each master's environment) and until when, so a test can tell whether an account ever
ran on two masters at once. It upserts one inbound message every ``every_s``, numbered on
from what the store has of the account; with the option ``ids_by_node``, its id starts with
the node's name, so each master's items are its own. Each tick records the id it upserted
(in the spool by then)."""

import asyncio
import json
import os
import time
from pathlib import Path

from hiscrm.platforms.base import PlatformContext

NODE_ENV = "HISCRM_TEST_NODE"


class Served:
    async def run(self, ctx: PlatformContext) -> None:
        path = Path(ctx.options["record_dir"]) / f"{ctx.account.id}.runs"
        every_s = float(ctx.options.get("every_s", 0.1))
        run = {"node": os.environ.get(NODE_ENV, "?"), "pid": os.getpid()}
        prefix = f"{run['node']}-" if ctx.options.get("ids_by_node") else "m"
        n = ctx.count("message")
        with path.open("a") as f:
            f.write(json.dumps({**run, "at": time.time(), "what": "start", "n": n}) + "\n")
            f.flush()
            try:
                while True:
                    item_id = f"{prefix}{n:07d}"
                    ctx.upsert_message(
                        {
                            "id": item_id,
                            "conversation_id": "c1",
                            "direction": "inbound",
                            "sender_id": "u1",
                            "text": f"message number {n}",
                            "sent_at": 1_763_848_020_000 + n,
                        }
                    )
                    n += 1
                    tick = {**run, "at": time.time(), "what": "tick", "n": n, "id": item_id}
                    f.write(json.dumps(tick) + "\n")
                    f.flush()
                    await asyncio.sleep(every_s)
            finally:
                f.write(json.dumps({**run, "at": time.time(), "what": "stop", "n": n}) + "\n")
                f.flush()
