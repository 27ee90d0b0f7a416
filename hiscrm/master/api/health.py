"""Health that tells the truth: ``ok``, ``degraded`` or ``failing``, with named checks.

* ``failing`` (``/healthz`` answers 503): the master is shutting down; the store cannot
  commit (its writer stopped, a write failed because of the store itself, or a write has
  waited or run too long, e.g. on a lock another process holds); the disk of the state
  directory is nearly full; no worker runs while accounts are enabled.
  In a cluster, also: the leases cannot be renewed (cut off from PostgreSQL): the
  accounts held are stopped before their leases can expire, and the check says so.
* ``degraded`` (200): a configured worker is not running; an account is not doing its
  job (unassigned, in backoff, down, failed, quarantined, stale); a platform module
  cannot be found.
* ``ok`` otherwise.

``assess`` is a pure function of what the read model gathers; ``HealthMonitor`` runs it
whenever something changed (it is poked), logs every change once and tells the listeners.
What no event announces (a store that stops committing, the disk filling up) is probed
cheaply once a second (on the beat, with the master's other timers), and the whole
assessment runs again when the probe differs from it, and at least every
``FULL_EVERY_S`` besides.
"""

import asyncio
from collections.abc import Callable

import msgspec
from structlog.typing import FilteringBoundLogger

from hiscrm.items import epoch_ms
from hiscrm.master.api.beat_wakeup import BeatWakeup
from hiscrm.master.api.schemas import Check, Health
from hiscrm.master.data.account_status import TROUBLE, AccountState
from hiscrm.master.data.lease_view import LeaseStats
from hiscrm.master.data.store import StoreStats

ORDER = {"ok": 0, "degraded": 1, "failing": 2}
NAMED = 5  # at most this many ids named per line
CHECK_EVERY_S = 1.0  # what no event announces (a stuck store, the disk) is logged within this
FULL_EVERY_S = 10.0  # the whole assessment, even when nothing was announced
UNANNOUNCED = ("store", "disk")  # the checks the probe looks at


class HealthInputs(msgspec.Struct, frozen=True):
    shutting_down: bool
    store: StoreStats
    disk_free_bytes: int | None  # None: cannot be read
    min_free_bytes: int
    workers: dict[str, str]  # configured worker -> state
    solo_workers: dict[str, str]  # worker of a quarantined account -> state
    accounts: dict[str, AccountState]  # every known account
    stale: frozenset[str]
    failed_reasons: dict[str, str]  # account -> why its platform cannot run
    missing_platforms: dict[str, list[str]]  # platform spec -> its accounts
    leases: LeaseStats | None = None  # a cluster: this master's lease keeping


def assess(inputs: HealthInputs) -> Health:
    checks = {
        "master": _master(inputs),
        "store": _store(inputs),
        "disk": _disk(inputs),
        "workers": _workers(inputs),
        "accounts": _accounts(inputs),
        "platforms": _platforms(inputs),
    }
    if inputs.leases is not None:
        checks["leases"] = _leases(inputs.leases)
    status = max((c.status for c in checks.values()), key=ORDER.__getitem__)
    return Health(status=status, checks=checks)


def _master(inputs: HealthInputs) -> Check:
    if inputs.shutting_down:
        return Check(status="failing", detail="shutting down")
    return Check(status="ok", detail="running")


def unannounced(
    store: StoreStats, disk_free_bytes: int | None, min_free_bytes: int
) -> tuple[str, ...]:
    """The status of each check in ``UNANNOUNCED``: what no event announces, cheaply."""
    return _store_check(store).status, _disk_check(disk_free_bytes, min_free_bytes).status


def _store(inputs: HealthInputs) -> Check:
    return _store_check(inputs.store)


def _store_check(store: StoreStats) -> Check:
    if not store.alive:
        return Check(status="failing", detail="the store's writer has stopped: nothing commits")
    if store.cannot_commit is not None:
        return Check(status="failing", detail=f"the store cannot commit: {store.cannot_commit}")
    return Check(status="ok", detail=f"committing ({store.commits} commits)")


def _disk(inputs: HealthInputs) -> Check:
    return _disk_check(inputs.disk_free_bytes, inputs.min_free_bytes)


def _disk_check(free: int | None, min_free_bytes: int) -> Check:
    if free is None:
        return Check(status="degraded", detail="cannot read the free space of the state dir")
    mb, limit = free // 2**20, min_free_bytes // 2**20
    if free < min_free_bytes:
        return Check(status="failing", detail=f"disk nearly full: {mb} MB free (min {limit} MB)")
    if free < 2 * min_free_bytes:
        return Check(status="degraded", detail=f"disk filling up: {mb} MB free (min {limit} MB)")
    return Check(status="ok", detail=f"{mb} MB free")


# Accounts no worker of this master is meant to run.
NOT_HERE = frozenset({AccountState.DISABLED, AccountState.ELSEWHERE})


def _workers(inputs: HealthInputs) -> Check:
    running = [w for w, s in inputs.workers.items() if s == "running"]
    solo = [w for w, s in inputs.solo_workers.items() if s == "running"]
    enabled = [a for a, s in inputs.accounts.items() if s not in NOT_HERE]
    summary = f"{len(running)}/{len(inputs.workers)} running"
    starting = [w for w, s in (inputs.workers | inputs.solo_workers).items() if s == "starting"]
    if enabled and not running and not solo:
        if starting and not inputs.shutting_down:
            return Check(status="degraded", detail=f"{summary}: {_names(starting)} starting")
        return Check(
            status="failing", detail=f"no worker runs while {len(enabled)} accounts are enabled"
        )
    down = [f"{w} is {s}" for w, s in inputs.workers.items() if s != "running"]
    if down and not inputs.shutting_down:
        return Check(status="degraded", detail=f"{summary}: {_names(down)}")
    return Check(status="ok", detail=summary)


def _accounts(inputs: HealthInputs) -> Check:
    by_state: dict[AccountState, list[str]] = {}
    for account_id, state in sorted(inputs.accounts.items()):
        by_state.setdefault(state, []).append(account_id)
    trouble = [f"{state}: {_names(ids)}" for state, ids in by_state.items() if state in TROUBLE]
    if inputs.stale:
        trouble.append(f"stale (no progress): {_names(sorted(inputs.stale))}")
    failed = [f"{a} ({why})" for a, why in sorted(inputs.failed_reasons.items())]
    if failed:
        trouble.append(f"cannot run: {_names(failed)}")
    counts = ", ".join(f"{len(ids)} {state}" for state, ids in by_state.items()) or "none"
    if trouble:
        return Check(status="degraded", detail="; ".join(trouble))
    return Check(status="ok", detail=counts)


def _platforms(inputs: HealthInputs) -> Check:
    if not inputs.missing_platforms:
        return Check(status="ok", detail="every platform module is there")
    missing = [
        f"{spec} (accounts {', '.join(accounts)})"
        for spec, accounts in sorted(inputs.missing_platforms.items())
    ]
    return Check(status="degraded", detail=f"platform module not found: {_names(missing)}")


def _leases(stats: LeaseStats) -> Check:
    """A cluster's leases: renewed, or not (cut off from the store, the accounts stop)."""
    if stats.last_error is not None:
        since = stats.failing_since or epoch_ms()
        held = (
            f"{stats.held} leases still held, stopped before they can expire"
            if stats.held
            else f"{stats.stopped_cut_off} accounts stopped before their leases could expire"
        )
        return Check(
            status="failing",
            detail=f"cannot renew the leases for {(epoch_ms() - since) / 1000:.1f} s "
            f"({held}): {stats.last_error}",
        )
    if stats.renewals == 0:
        return Check(status="ok", detail="joining the cluster")
    return Check(status="ok", detail=f"{stats.held} leases held of {stats.capacity}, renewed")


def _names(items: list[str]) -> str:
    shown = ", ".join(items[:NAMED])
    return shown + (f" and {len(items) - NAMED} more" if len(items) > NAMED else "")


class HealthMonitor:
    """Assesses health when poked, when the probe of what no event announces differs
    from the last assessment (looked at once a second), and every ``FULL_EVERY_S``;
    logs each change once (with what changed) and tells ``on_change``; ``current`` is
    the last assessment. Without a ``probe``, every look is a whole assessment."""

    def __init__(
        self,
        gather: Callable[[], HealthInputs],
        log: FilteringBoundLogger,
        on_change: Callable[[Health], None] = lambda health: None,
        probe: Callable[[], tuple[str, ...]] | None = None,
    ) -> None:
        self._gather = gather
        self._probe = probe
        self._log = log
        self._on_change = on_change
        self.current: Health | None = None
        self._poke = BeatWakeup()

    def assess_now(self) -> Health:
        health = assess(self._gather())
        previous, self.current = self.current, health
        if previous is None or _summary(previous) != _summary(health):
            level = {"ok": self._log.info, "degraded": self._log.warning}.get(
                health.status, self._log.error
            )
            if health.checks["master"].status == "failing":  # shutting down, as asked
                level = self._log.info
            level(
                "health",
                status=health.status,
                was=previous.status if previous else None,
                checks={
                    n: f"{c.status}: {c.detail}"
                    for n, c in health.checks.items()
                    if c.status != "ok"
                },
            )
            self._on_change(health)
        return health

    def poke(self) -> None:
        """Something changed: assess soon rather than at the next second."""
        self._poke.wake()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.assess_now()
        assessed_at = loop.time()
        while True:
            poked = await self._poke.wait(CHECK_EVERY_S)
            if not poked and not self._due(loop.time() - assessed_at):
                continue
            self.assess_now()
            assessed_at = loop.time()

    def _due(self, since_s: float) -> bool:
        """Nothing was announced: whether to assess anyway."""
        if self._probe is None or self.current is None or since_s >= FULL_EVERY_S:
            return True
        return self._probe() != tuple(self.current.checks[name].status for name in UNANNOUNCED)


# Checks whose detail, when not ok, names what is wrong (a worker stopping, then stopped;
# another account in trouble): a new detail is a change. The others' details move a number
# (free space, seconds cut off) and are not.
NAMING = frozenset({"workers", "accounts", "platforms"})


def _summary(health: Health) -> tuple[str, tuple[tuple[str, str, str], ...]]:
    """What counts as a change: the status of the whole and of each check, and the detail
    of a check in ``NAMING`` that is not ok (a detail that only moves a number is not a
    change)."""
    return health.status, tuple(
        (n, c.status, c.detail if c.status != "ok" and n in NAMING else "")
        for n, c in sorted(health.checks.items())
    )
