"""A wait that ends on the next beat (``hiscrm.beat``) or as soon as someone calls
``wake``, whichever comes first.

The master's periodic timers use it so that they fall on the same moments and share a
wake-up of the loop, and so that waiting costs one timer and one future: no task is
created and cancelled, and no ``TimeoutError`` raised, a few hundred microseconds each
that an idle master would otherwise spend a few times a second.
"""

import asyncio

from hiscrm.beat import next_beat


def _resolve(future: "asyncio.Future[None]") -> None:
    if not future.done():
        future.set_result(None)


class BeatWakeup:
    def __init__(self) -> None:
        self._woken = False
        self._future: asyncio.Future[None] | None = None

    def wake(self) -> None:
        """End the current wait now (or the next one at once, if none is waiting)."""
        self._woken = True
        if self._future is not None:
            _resolve(self._future)

    async def wait(self, period: float) -> bool:
        """Until the next whole multiple of ``period`` on the loop's clock, or ``wake``:
        whether it was woken."""
        if not self._woken:
            loop = asyncio.get_running_loop()
            future = self._future = loop.create_future()
            timer = loop.call_at(next_beat(loop.time(), period), _resolve, future)
            try:
                await future
            finally:
                timer.cancel()
                self._future = None
        woken, self._woken = self._woken, False
        return woken
