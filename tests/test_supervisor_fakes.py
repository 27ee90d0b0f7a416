"""The supervisor, the account manager and the rolling reload driven through their events,
with fake worker processes (``fakes.py``): each test runs in milliseconds, beside the
real-process tests that prove the same paths end to end."""

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from fakes import FakeMaster
from structlog.testing import capture_logs

from hiscrm.master.supervision.commands import (
    AddAccount,
    ChangeAccount,
    CommandRefused,
    ReloadWorkers,
    RestartWorker,
    StartWorker,
    StopWorker,
    SyncAccount,
)
from hiscrm.master.supervision.rolling_reload import RollingReload
from hiscrm.master.supervision.worker_slot import WorkerSlot, WorkerState
from hiscrm.models import AccountSpec
from hiscrm.protocol import MasterAccountAssign, MasterAccountRevoke, MasterSyncRequest

pytestmark = pytest.mark.timeout(20)


def run(tmp_path: Path, test: Callable[[FakeMaster], Awaitable[None]], **kwargs: int) -> None:
    async def main() -> None:
        async with FakeMaster(tmp_path, **kwargs) as master:
            await test(master)

    asyncio.run(main())


def test_start_on_a_starting_worker_answers_once_it_runs(tmp_path: Path) -> None:
    async def test(master: FakeMaster) -> None:
        master.launcher.register_on_start = False
        slot = master.sup.slots["worker1"]
        await master.until(lambda: slot.state is WorkerState.STARTING)
        answer = asyncio.create_task(master.sup.command(StartWorker("worker1")))
        await asyncio.sleep(0.05)
        assert not answer.done()  # not before it runs ...
        master.launcher.of("worker1")[0].register()
        result = await asyncio.wait_for(answer, 1)  # ... and once it does
        assert result is slot
        assert slot.state is WorkerState.RUNNING
        for worker in master.launcher.started:
            worker.register()

    run(tmp_path, test)


def test_restart_answers_with_the_new_process_running(tmp_path: Path) -> None:
    async def test(master: FakeMaster) -> None:
        slot = master.sup.slots["worker1"]
        await master.until(lambda: slot.state is WorkerState.RUNNING)
        first = slot.pid
        result: WorkerSlot = await asyncio.wait_for(master.sup.command(RestartWorker("worker1")), 2)
        assert result.state is WorkerState.RUNNING
        assert result.pid != first
        assert result.restarts_by_reason == {"restart": 1}
        # The accounts went to the new process.
        new = master.launcher.of("worker1")[-1]
        await master.until(lambda: new.accounts == {"acc-1", "acc-3"})

    run(tmp_path, test)


def test_stop_answers_when_stopped_and_start_brings_it_back(tmp_path: Path) -> None:
    async def test(master: FakeMaster) -> None:
        slot = master.sup.slots["worker2"]
        await master.until(lambda: slot.state is WorkerState.RUNNING)
        stopped = await asyncio.wait_for(master.sup.command(StopWorker("worker2")), 2)
        assert stopped.state is WorkerState.STOPPED
        assert (await master.sup.command(StopWorker("worker2"))).state is WorkerState.STOPPED
        started = await asyncio.wait_for(master.sup.command(StartWorker("worker2")), 2)
        assert started.state is WorkerState.RUNNING
        assert slot.starts == 2

    run(tmp_path, test)


def test_a_rolling_reload_hands_each_account_over_through_events(tmp_path: Path) -> None:
    async def test(master: FakeMaster) -> None:
        slots = master.sup.slots
        await master.until(lambda: all(s.state is WorkerState.RUNNING for s in slots.values()))
        old = {w: master.launcher.of(w)[0] for w in slots}
        await master.until(lambda: old["worker1"].accounts == {"acc-1", "acc-3"})
        reload: RollingReload = await asyncio.wait_for(master.sup.command(ReloadWorkers()), 3)
        assert reload.error is None
        assert [s.worker for s in reload.steps] == ["worker1", "worker2"]
        for worker_id, slot in slots.items():
            new = master.launcher.of(worker_id)[-1]
            assert slot.current is not None
            assert slot.current.pid == new.pid != old[worker_id].pid
            assert slot.outgoing is None
            assert slot.state is WorkerState.RUNNING
            assert not old[worker_id].alive
            # The old process was asked to let go of every account before the new one
            # was given it: never two processes at once.
            revoked = {
                m.account_id for m in old[worker_id].received if isinstance(m, MasterAccountRevoke)
            }
            assigned = {m.account.id for m in new.received if isinstance(m, MasterAccountAssign)}
            assert revoked == assigned == set(master.manager.accounts_of(worker_id))
            assert slot.restarts_by_reason == {"reload": 1}

    run(tmp_path, test)


def test_worker_commands_wait_for_a_reload_and_a_second_reload_is_refused(
    tmp_path: Path,
) -> None:
    async def test(master: FakeMaster) -> None:
        slots = master.sup.slots
        await master.until(lambda: all(s.state is WorkerState.RUNNING for s in slots.values()))
        master.launcher.register_on_start = False  # the replacement stays starting
        reload = asyncio.create_task(master.sup.command(ReloadWorkers()))
        await master.until(lambda: len(master.launcher.started) == 3)
        with pytest.raises(CommandRefused, match="a reload is already under way"):
            await master.sup.command(ReloadWorkers())
        with pytest.raises(CommandRefused, match="a reload is under way"):
            await master.sup.command(StopWorker("worker2"))
        master.launcher.register_on_start = True
        master.launcher.started[-1].register()
        result = await asyncio.wait_for(reload, 3)
        assert result.error is None

    run(tmp_path, test)


def test_a_replacement_that_dies_stops_the_reload_and_the_old_process_serves_on(
    tmp_path: Path,
) -> None:
    async def test(master: FakeMaster) -> None:
        slots = master.sup.slots
        await master.until(lambda: all(s.state is WorkerState.RUNNING for s in slots.values()))
        master.launcher.register_on_start = False
        reload = asyncio.create_task(master.sup.command(ReloadWorkers()))
        await master.until(lambda: len(master.launcher.started) == 3)
        master.launcher.started[-1].exit(78)
        result: RollingReload = await asyncio.wait_for(reload, 3)
        assert result.error is not None
        assert "the old one keeps serving" in result.error
        assert [s.state for s in result.steps] == ["boot_failed"]
        assert slots["worker1"].pid == master.launcher.of("worker1")[0].pid
        assert slots["worker1"].incoming is None

    run(tmp_path, test)


def test_sync_requests_go_to_the_accounts_worker_or_are_refused(tmp_path: Path) -> None:
    async def test(master: FakeMaster) -> None:
        slots = master.sup.slots
        await master.until(lambda: all(s.state is WorkerState.RUNNING for s in slots.values()))
        assert await master.sup.command(SyncAccount("acc-2", 5)) == "worker2"
        worker2 = master.launcher.of("worker2")[0]
        requests = [m for m in worker2.received if isinstance(m, MasterSyncRequest)]
        assert [(r.account_id, r.from_seq) for r in requests] == [("acc-2", 5)]
        await master.sup.command(StopWorker("worker2"))
        with pytest.raises(CommandRefused, match="acc-2"):
            await master.sup.command(SyncAccount("acc-2"))

    run(tmp_path, test)


def test_commands_during_shutdown_are_refused(tmp_path: Path) -> None:
    async def test(master: FakeMaster) -> None:
        slots = master.sup.slots
        await master.until(lambda: all(s.state is WorkerState.RUNNING for s in slots.values()))
        master.launcher.register_on_start = False
        master.launcher.of("worker1")[0].exit(-9)  # crashes: restarted, stays starting
        await master.until(lambda: slots["worker1"].state is WorkerState.STARTING)
        waiting = asyncio.create_task(master.sup.command(StartWorker("worker1")))
        await asyncio.sleep(0.01)
        import signal

        from hiscrm.master.supervision.events import SignalReceived

        master.sup.post(SignalReceived(signal.SIGTERM))
        with pytest.raises(CommandRefused, match="shutting down"):
            await asyncio.wait_for(waiting, 2)

    run(tmp_path, test)


def test_a_worker_starts_with_the_platforms_of_accounts_added_at_runtime(tmp_path: Path) -> None:
    """Platforms come from the registry, not the config file: a worker started after an
    account with a new platform was added imports that platform at boot."""

    async def test(master: FakeMaster) -> None:
        slot = master.sup.slots["worker1"]
        await master.until(lambda: slot.state is WorkerState.RUNNING)
        assert master.launcher.boots[-1].platforms == ["hiscrm.platforms.demo:DemoPlatform"]
        new = AccountSpec(id="new-1", platform="tests.testplatforms.recording:Starts")
        await asyncio.wait_for(master.sup.command(AddAccount(new, "api")), 2)
        await asyncio.wait_for(master.sup.command(RestartWorker("worker1")), 2)
        assert master.launcher.boots[-1].worker_id == "worker1"
        assert master.launcher.boots[-1].platforms == [
            "hiscrm.platforms.demo:DemoPlatform",
            "tests.testplatforms.recording:Starts",
        ]

    run(tmp_path, test)


def test_sends_still_queued_at_shutdown_go_before_the_store_closes(tmp_path: Path) -> None:
    """An assignment waiting on the store when the master stops is cancelled by
    ``AccountManager.stop`` (it would otherwise read a closed store), and leaves nothing
    behind."""

    async def test(master: FakeMaster) -> None:
        reading = asyncio.Event()
        never = asyncio.Event()
        plain_digest = master.store.digest

        async def stuck_digest(account_id: str) -> object:
            reading.set()
            await never.wait()
            return await plain_digest(account_id)

        master.store.digest = stuck_digest  # type: ignore[method-assign,assignment]
        master.launcher.register_on_start = False
        slot = master.sup.slots["worker1"]
        await master.until(lambda: slot.state is WorkerState.STARTING)
        master.launcher.of("worker1")[0].register()
        await asyncio.wait_for(reading.wait(), 2)  # an assignment reads the digest
        sending = set(master.manager._sending)
        assert sending
        await master.manager.stop()
        assert all(task.cancelled() for task in sending)
        assert not master.manager._sending
        for worker in master.launcher.started:
            worker.register()

    run(tmp_path, test)


def test_a_step_that_waits_past_the_heartbeat_timeout_judges_no_worker_hung(
    tmp_path: Path,
) -> None:
    """A step that did not finish for longer than a heartbeat timeout (the master was
    stopped in it, or it waited on something) left the workers' heartbeats unread: the
    stall is allowed for before any deadline is judged, not after."""
    from hiscrm.master.supervision.events import DeadlinesChanged, Event

    async def test(master: FakeMaster) -> None:
        sup = master.sup
        await master.until(lambda: all(s.state is WorkerState.RUNNING for s in sup.slots.values()))
        pids = {s.id: s.pid for s in sup.slots.values()}
        handle, step = sup._handle, sup._step
        stepped = asyncio.Event()

        async def slow_handle(event: Event, now: float) -> bool:
            if isinstance(event, DeadlinesChanged):
                await asyncio.sleep(1.0)  # longer than the heartbeat timeout (0.3 s)
            return await handle(event, now)

        async def watched_step(event: Event | None) -> None:
            await step(event)
            if isinstance(event, DeadlinesChanged):
                stepped.set()

        sup._handle = slow_handle  # type: ignore[method-assign]
        sup._step = watched_step  # type: ignore[method-assign]
        sup.post(DeadlinesChanged())
        await asyncio.wait_for(stepped.wait(), 5)
        assert sup.stalls == 1
        assert {s.id: (s.state, s.pid) for s in sup.slots.values()} == {
            w: (WorkerState.RUNNING, pid) for w, pid in pids.items()
        }

    run(tmp_path, test, heartbeat_timeout_ms=300)


def test_a_solo_worker_has_its_accounts_own_memory_limit_a_shared_one_the_workers(
    tmp_path: Path,
) -> None:
    """``[supervision] max_memory_mb`` for the configured workers and for a solo worker
    whose account has no limit of its own; the account's own in its solo worker. A new
    limit applies to the next measurement and restarts no task (new options do)."""
    mib = 2**20

    async def test(master: FakeMaster) -> None:
        sup = master.sup
        await master.until(lambda: all(s.state is WorkerState.RUNNING for s in sup.slots.values()))
        assert sup.memory_limit_bytes("worker1") == 200 * mib
        assert sup.memory_limit_bytes("solo-acc-1") == 50 * mib
        assert sup.memory_limit_bytes("solo-acc-2") == 200 * mib  # none of its own
        assert sup.memory_limit_bytes("solo-nobody") == 200 * mib

        worker = master.manager.assigner.owner_of("acc-1")
        assert worker is not None
        process = master.launcher.of(worker)[-1]

        def restarts() -> list[object]:
            return [
                m
                for m in process.received
                if isinstance(m, MasterAccountRevoke) and m.account_id == "acc-1"
            ]

        for limit, bytes_ in ((60, 60 * mib), (None, 200 * mib), (70, 70 * mib)):
            spec = AccountSpec(id="acc-1", max_memory_mb=limit)
            await asyncio.wait_for(sup.command(ChangeAccount(spec)), 2)
            assert master.manager.specs["acc-1"] == spec
            assert sup.memory_limit_bytes("solo-acc-1") == bytes_
        changed = AccountSpec(id="acc-1", options={"rate": 2}, max_memory_mb=70)
        await asyncio.wait_for(sup.command(ChangeAccount(changed)), 2)
        # The worker gets its messages in order: a revoke for a limit change would come
        # before the one the new options bring, so there would be two.
        await master.until(lambda: len(restarts()) >= 1)
        assert len(restarts()) == 1

    async def main() -> None:
        async with FakeMaster(
            tmp_path, max_memory_mb=200, account_memory_mb={"acc-1": 50}
        ) as master:
            await test(master)

    asyncio.run(main())


def test_an_accounts_own_limit_alone_brings_the_memory_watch_to_its_short_schedule(
    tmp_path: Path,
) -> None:
    """With no ``[supervision] max_memory_mb``, the trees are measured only every
    ``SHOWN_ONLY_INTERVAL_S``; a quarantined account given a limit of its own brings the
    next pass within ``CHECK_INTERVAL_S``, as a limit for the workers would."""
    from hiscrm.master.supervision.memory_watch import CHECK_INTERVAL_S

    async def quarantined_then_limited(master: FakeMaster) -> None:
        sup, loop = master.sup, asyncio.get_running_loop()
        await master.until(lambda: sup.slots["worker1"].state is WorkerState.RUNNING)
        while not master.manager.quarantine.is_quarantined("acc-1"):  # deaths while it is there
            process = master.launcher.of("worker1")[-1]
            await master.until(lambda p=process: "acc-1" in p.accounts)
            process.exit(-9)
            await master.until(lambda p=process: p is not master.launcher.of("worker1")[-1])
        solo = "solo-acc-1"
        await master.until(
            lambda: solo in sup.slots and sup.slots[solo].state is WorkerState.RUNNING
        )
        await master.until(
            lambda: (sup.memory.deadline or 0) > loop.time() + CHECK_INTERVAL_S, timeout=10
        )  # measured since it registered: no limit anywhere, so the long schedule
        assert sup.memory_limit_bytes(solo) is None
        await asyncio.wait_for(
            sup.command(ChangeAccount(AccountSpec(id="acc-1", max_memory_mb=50))), 2
        )
        assert sup.memory_limit_bytes(solo) == 50 * 2**20
        deadline = sup.memory.deadline
        assert deadline is None or deadline <= loop.time() + CHECK_INTERVAL_S

    run(tmp_path, quarantined_then_limited, workers=1, accounts=1)


REFUSED = "assignment cannot be sent: its frame is refused"


def test_an_assignment_whose_frame_is_refused_is_logged_and_a_reload_still_ends(
    tmp_path: Path,
) -> None:
    """Options are bounded far below the frame limit; an account that got past that (made
    by an older version) cannot be sent: one error line naming it, and no reload waits
    for it for ever."""

    async def test(master: FakeMaster) -> None:
        slots = master.sup.slots
        await master.until(lambda: all(s.state is WorkerState.RUNNING for s in slots.values()))
        pad = {"pad": "y" * 1_100_000}
        big = AccountSpec.model_construct(id="big", platform="demo", options=pad, enabled=True)
        with capture_logs() as logs:
            master.manager.add(big, "api", asyncio.get_running_loop().time())
            await master.until(lambda: any(e["event"] == REFUSED for e in logs))
            reload = await asyncio.wait_for(master.sup.command(ReloadWorkers()), 15)
        refused = [e for e in logs if e["event"] == REFUSED]
        assert refused[0]["account_id"] == "big"
        assert refused[0]["log_level"] == "error"
        assert reload.steps  # it ended: no hand-over waits for ever for an account never sent

    run(tmp_path, test)
