"""Stale-sync health in isolation: flags, episodes, and the deadline the master sleeps to."""

import structlog

from hiscrm.master.data.sync_health import SyncHealth


def test_deadlines_follow_watches_successes_and_stale_flags() -> None:
    health = SyncHealth(stale_after_s=10.0, log=structlog.get_logger())
    assert health.next_deadline() is None  # nothing watched: nothing to wake up for
    health.watch("a", 0.0)
    health.watch("b", 2.0)
    assert health.next_deadline() == 10.0
    health.success("a", 5.0, 1_763_848_020_000, 3)  # a is due at 15 now, b at 12
    assert health.next_deadline() == 10.0  # kept early: a wake-up that finds nothing
    health.check(10.0)
    assert not health.accounts["a"].stale
    assert not health.accounts["b"].stale
    assert health.next_deadline() == 12.0
    health.check(12.0)
    assert health.accounts["b"].stale
    assert health.accounts["b"].stale_episodes == 1
    assert health.next_deadline() == 15.0  # b is stale: only a is left to wait for
    health.check(15.0)
    assert health.accounts["a"].stale
    assert health.next_deadline() is None
    health.success("b", 20.0, 1_763_848_035_000, 0)  # b resumes: due again at 30
    assert not health.accounts["b"].stale
    assert health.next_deadline() == 30.0
    health.check(30.0)
    assert health.accounts["b"].stale_episodes == 2
