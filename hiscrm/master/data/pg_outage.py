"""An episode of PostgreSQL out of reach, as the store's writer lives through it: since
when, why, how many tries; said in the log once when it begins and once when it ends
(every failed try is counted, not logged), and to ``/healthz`` all along.

Only the writer's thread calls ``failed`` and ``reached``; the loop reads ``reason``.
"""

import time

import msgspec
from structlog.typing import FilteringBoundLogger

from hiscrm.backoff import RestartBackoff
from hiscrm.master.data.pg_reach import Reach, classify, one_line

RETRY_FIRST_S = 0.25
RETRY_MAX_S = 2.0  # a server that comes back is used again within this


class _Episode(msgspec.Struct, frozen=True):
    since_wall: float  # time.time() of the first failure
    since: float  # time.monotonic() of the first failure
    error: str  # the last failure, on one line
    reach: Reach  # of the last failure
    tries: int


class Outage:
    def __init__(self, where: str, log: FilteringBoundLogger) -> None:
        self._where = where
        self._log = log
        self._backoff = RestartBackoff(RETRY_FIRST_S, RETRY_MAX_S, float("inf"))
        self._episode: _Episode | None = None
        self.failures = 0  # every failed try, over all episodes (counted in the errors)
        self.episodes = 0

    @property
    def down(self) -> bool:
        return self._episode is not None

    def failed(self, error: BaseException) -> float:
        """A try to connect (and migrate) failed: note it; the delay before the next."""
        self.failures += 1
        reach, line = classify(error), one_line(error)
        episode = self._episode
        if episode is None:
            self.episodes += 1
            self._episode = _Episode(time.time(), time.monotonic(), line, reach, 1)
            self._backoff.failures = 0
            delay = self._backoff.record_failure(0.0, during_start=True)
            self._log.error(
                "cannot reach the store; the master goes on and keeps trying",
                url=self._where,
                reach=reach.value,
                retry_max_s=RETRY_MAX_S,
                exc_info=error,
            )
            return delay
        self._episode = _Episode(episode.since_wall, episode.since, line, reach, episode.tries + 1)
        if reach is Reach.PERMANENT and episode.reach is Reach.TRANSIENT:  # news: say it
            self._log.error(
                "the store is reached but cannot be used; still trying",
                url=self._where,
                error=line,
                tries=episode.tries + 1,
            )
        return self._backoff.record_failure(0.0, during_start=True)

    def reached(self) -> None:
        """Connected (and migrated): the episode, if any, is over."""
        episode, self._episode = self._episode, None
        if episode is None:
            return
        self._log.warning(
            "store reachable again",
            url=self._where,
            down_s=round(time.monotonic() - episode.since, 3),
            tries=episode.tries,
        )

    def reason(self) -> str | None:
        """For health: ``cannot reach URL since TIME: ERROR; retrying every N s``."""
        episode = self._episode
        if episode is None:
            return None
        since = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(episode.since_wall))
        verb = "cannot reach" if episode.reach is Reach.TRANSIENT else "cannot use"
        return (
            f"{verb} {self._where} since {since}: {episode.error}; "
            f"retrying every {RETRY_MAX_S:g} s ({episode.tries} "
            f"{'try' if episode.tries == 1 else 'tries'})"
        )
