"""Health as a pure function of what the master knows (``health.assess``): each check's
status and what it names."""

import pytest
import structlog
from msgspec.structs import replace

from hiscrm.master.api.health import (
    FULL_EVERY_S,
    HealthInputs,
    HealthMonitor,
    assess,
    unannounced,
)
from hiscrm.master.data.account_status import AccountState
from hiscrm.master.data.store import StoreStats

MiB = 2**20
HEALTHY = HealthInputs(
    shutting_down=False,
    store=StoreStats(where="hiscrm.db", alive=True, commits=5, items_written=9, errors=0),
    disk_free_bytes=10_000 * MiB,
    min_free_bytes=256 * MiB,
    workers={"worker1": "running", "worker2": "running"},
    solo_workers={},
    accounts={"acc-1": AccountState.RUNNING, "acc-2": AccountState.RUNNING},
    stale=frozenset(),
    failed_reasons={},
    missing_platforms={},
)


def test_all_well_is_ok() -> None:
    health = assess(HEALTHY)
    assert health.status == "ok"
    assert {c.status for c in health.checks.values()} == {"ok"}


@pytest.mark.parametrize(
    ("free_mb", "status", "detail"),
    [
        (255, "failing", "disk nearly full: 255 MB free (min 256 MB)"),
        (256, "degraded", "disk filling up: 256 MB free (min 256 MB)"),
        (511, "degraded", "disk filling up: 511 MB free (min 256 MB)"),
        (512, "ok", "512 MB free"),
    ],
)
def test_the_disk_fails_below_its_minimum_and_degrades_below_twice_that(
    free_mb: int, status: str, detail: str
) -> None:
    health = assess(replace(HEALTHY, disk_free_bytes=free_mb * MiB))
    assert (health.checks["disk"].status, health.checks["disk"].detail) == (status, detail)
    assert health.status == status


def test_a_disk_whose_free_space_cannot_be_read_is_degraded() -> None:
    health = assess(replace(HEALTHY, disk_free_bytes=None))
    assert health.checks["disk"].status == "degraded"
    assert "cannot read the free space" in health.checks["disk"].detail


def test_a_store_that_cannot_commit_is_failing_and_says_why() -> None:
    stuck = replace(HEALTHY.store, cannot_commit="a write has been waiting for 2.1 s")
    health = assess(replace(HEALTHY, store=stuck))
    assert health.status == "failing"
    assert health.checks["store"].detail == (
        "the store cannot commit: a write has been waiting for 2.1 s"
    )
    dead = assess(replace(HEALTHY, store=replace(HEALTHY.store, alive=False)))
    assert dead.checks["store"].status == "failing"


def test_workers_one_down_is_degraded_none_running_is_failing() -> None:
    one = assess(replace(HEALTHY, workers={"worker1": "running", "worker2": "backoff"}))
    assert (one.status, one.checks["workers"].detail) == (
        "degraded",
        "1/2 running: worker2 is backoff",
    )
    none = assess(replace(HEALTHY, workers={"worker1": "boot_failed", "worker2": "backoff"}))
    assert none.status == "failing"
    assert none.checks["workers"].detail == "no worker runs while 2 accounts are enabled"
    starting = assess(replace(HEALTHY, workers={"worker1": "starting", "worker2": "backoff"}))
    assert starting.checks["workers"].status == "degraded"
    # A quarantined account's own worker running keeps the master from failing.
    solo = replace(HEALTHY, workers={"worker1": "backoff"}, solo_workers={"solo-a": "running"})
    assert assess(solo).checks["workers"].status == "degraded"


def test_accounts_in_trouble_are_named() -> None:
    inputs = replace(
        HEALTHY,
        accounts={
            "acc-1": AccountState.BACKOFF,
            "acc-2": AccountState.QUARANTINED,
            "acc-3": AccountState.FAILED,
            "acc-4": AccountState.RUNNING,
        },
        stale=frozenset({"acc-4"}),
        failed_reasons={"acc-3": "ModuleNotFoundError: No module named 'x'"},
    )
    accounts = assess(inputs).checks["accounts"]
    assert accounts.status == "degraded"
    for part in (
        "backoff: acc-1",
        "quarantined: acc-2",
        "failed: acc-3",
        "stale (no progress): acc-4",
        "cannot run: acc-3 (ModuleNotFoundError: No module named 'x')",
    ):
        assert part in accounts.detail


def test_a_missing_platform_module_is_degraded_and_named() -> None:
    health = assess(replace(HEALTHY, missing_platforms={"nowhere:Thing": ["acc-1", "acc-2"]}))
    assert health.status == "degraded"
    assert health.checks["platforms"].detail == (
        "platform module not found: nowhere:Thing (accounts acc-1, acc-2)"
    )


def test_the_monitor_assesses_again_only_when_the_probe_differs_or_it_is_time() -> None:
    """Between announcements the monitor probes only what no event announces (the store,
    the disk); a whole assessment follows when that differs from the last one, or every
    ``FULL_EVERY_S``."""
    inputs = [HEALTHY]
    gathered: list[HealthInputs] = []

    def gather() -> HealthInputs:
        gathered.append(inputs[0])
        return inputs[0]

    def probe() -> tuple[str, ...]:
        now = inputs[0]
        return unannounced(now.store, now.disk_free_bytes, now.min_free_bytes)

    monitor = HealthMonitor(gather, structlog.get_logger(), probe=probe)
    assert monitor.assess_now().status == "ok"
    assert not monitor._due(1.0)  # nothing changed: no assessment
    assert monitor._due(FULL_EVERY_S)  # ... but one every FULL_EVERY_S
    stuck = replace(HEALTHY.store, cannot_commit="a write has been waiting for 2.1 s")
    inputs[0] = replace(HEALTHY, store=stuck)
    assert monitor._due(0.5)
    assert monitor.assess_now().status == "failing"
    assert not monitor._due(0.5)
    inputs[0] = replace(HEALTHY, disk_free_bytes=100 * MiB)
    assert monitor._due(0.5)
    assert len(gathered) == 2  # probes gather nothing
    assert HealthMonitor(gather, structlog.get_logger())._due(0.5)  # no probe: every look
