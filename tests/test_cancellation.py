"""A task that is cancelled ends, even when what it waited for arrives at that moment.

Python 3.11's ``asyncio.wait_for`` returns the result instead of raising when the inner
wait completes in the same loop pass as the cancellation: the task goes on as if never
cancelled. A hook that stopped just as the shutdown's events arrived ran on, and the
master waited for it forever. ``asyncio.timeout`` does not lose the cancellation.
"""

import ast
import asyncio
from pathlib import Path

import pytest

import hiscrm
from hiscrm.master.data.event_filter import EventFilter
from hiscrm.master.data.store import StoredEvent
from hiscrm.master.events.subscriber import Subscriber


@pytest.mark.timeout(10)
def test_a_follower_cancelled_as_events_arrive_stops() -> None:
    async def scenario() -> None:
        follower = Subscriber(EventFilter(), max_bytes=1 << 20)
        waiting = asyncio.create_task(follower.next_batch(60.0))
        await asyncio.sleep(0)  # it waits for events
        follower.offer([StoredEvent(1, "worker.state", None, "{}")])  # they arrive ...
        waiting.cancel()  # ... in the same pass as its stop
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert waiting.cancelled()

    asyncio.run(scenario())


@pytest.mark.timeout(10)
def test_no_code_waits_with_wait_for() -> None:
    """The class, not the example: nothing in the package calls ``asyncio.wait_for``."""
    root = Path(hiscrm.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr == "wait_for":
                found.append(f"{path.relative_to(root)}:{node.lineno}")
    assert not found, f"asyncio.wait_for loses cancellations on 3.11; use asyncio.timeout: {found}"
