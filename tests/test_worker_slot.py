"""The worker slot's state machine and stop plans without processes: a fake launcher and a
hand-driven clock, for the paths real processes reach only by luck (stop while starting,
shutdown during a restart, launcher failures, a pipe that is already gone)."""

import asyncio
import signal
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from hiscrm.config import Config
from hiscrm.master.supervision.stop_plan import AfterStop, StopPlan, StopReason, StopStage
from hiscrm.master.supervision.worker_slot import IllegalTransition, WorkerSlot, WorkerState
from hiscrm.protocol import PROTOCOL_VERSION, WorkerRegister, decode, schema_hash

SUPERVISION = {
    "heartbeat_interval_s": 1,
    "heartbeat_timeout_s": 3,
    "start_timeout_s": 10,
    "stop_timeout_s": 5,
    "kill_timeout_s": 2,
    "backoff_initial_s": 0.5,
    "backoff_max_s": 4,
    "backoff_reset_after_s": 60,
}


class FakeProcess:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.exit_noticed_at = None
        self.pipe_open = True
        self.sent: list[str] = []
        self.group_signals: list[signal.Signals] = []
        self.signals: list[signal.Signals] = []
        self.exitcode: int | None = None

    def send(self, payload: bytes) -> bool:
        if self.pipe_open:
            self.sent.append(decode(payload).body.type)
        return self.pipe_open

    def signal_group(self, sig: signal.Signals) -> None:
        self.group_signals.append(sig)

    def send_signal(self, sig: signal.Signals) -> None:
        self.signals.append(sig)

    def reap(self) -> int | None:
        return self.exitcode

    def kill_leftovers(self) -> bool:
        return False

    def close(self) -> None:
        self.pipe_open = False


class FakeLauncher:
    def __init__(self) -> None:
        self.started: list[FakeProcess] = []
        self.fail_with: Exception | None = None

    async def start(self, boot: Any, post: Callable[[Any], None]) -> FakeProcess:
        if self.fail_with is not None:
            raise self.fail_with
        process = FakeProcess(1000 + len(self.started))
        self.started.append(process)
        return process


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


@pytest.fixture
def handle(tmp_path: Path) -> WorkerSlot:
    config = Config.model_validate({"state_dir": str(tmp_path), "supervision": SUPERVISION})
    return WorkerSlot("worker1", config, FakeLauncher(), lambda event: None, structlog.get_logger())


def launcher(handle: WorkerSlot) -> FakeLauncher:
    return handle._launcher  # type: ignore[return-value]


def register(handle: WorkerSlot, now: float) -> None:
    message = WorkerRegister(
        worker_id="worker1",
        pid=handle.pid or 0,
        protocol=PROTOCOL_VERSION,
        schema_hash=schema_hash(),
        platforms=[],
        boot_ms=1.0,
        code_version="v1",
        code_files=[],
    )
    assert handle.current is not None
    assert handle.register(handle.current, message, now)


def die(handle: WorkerSlot, exitcode: int, now: float) -> None:
    assert handle.current is not None
    handle.current.process.exitcode = exitcode  # type: ignore[attr-defined]
    run(handle.on_exit(handle.current, now))


def test_stop_while_starting_signals_the_group_and_stays_stopped(handle: WorkerSlot) -> None:
    run(handle.start(0.0, "test"))
    process = launcher(handle).started[0]
    run(handle.request_stop(StopReason.STOP, 1.0, restart=False))
    assert handle.state is WorkerState.STOPPING
    assert process.group_signals == [signal.SIGTERM]  # it cannot take messages yet
    die(handle, -15, 1.1)
    assert handle.state is WorkerState.STOPPED
    assert handle.deadline is None
    assert handle.last_exit is not None
    assert handle.last_exit.reason == "stop"


def test_shutdown_during_a_restart_cancels_the_restart(handle: WorkerSlot) -> None:
    run(handle.start(0.0, "test"))
    register(handle, 0.5)
    run(handle.request_stop(StopReason.RESTART, 1.0, restart=True))
    run(handle.request_stop(StopReason.SHUTDOWN, 1.1, restart=False))
    run(handle.request_stop(StopReason.RESTART, 1.2, restart=True))  # must not bring it back
    die(handle, 0, 1.3)
    assert handle.state is WorkerState.STOPPED
    assert len(launcher(handle).started) == 1


def test_shutdown_of_a_waiting_worker_stops_it_at_once(handle: WorkerSlot) -> None:
    run(handle.start(0.0, "test"))
    register(handle, 0.1)
    die(handle, -9, 1.0)  # first crash: restarted at once
    register(handle, 1.1)
    die(handle, -9, 2.0)  # second: backoff
    assert handle.state is WorkerState.BACKOFF
    assert handle.deadline == pytest.approx(2.5)
    run(handle.request_stop(StopReason.SHUTDOWN, 2.1, restart=False))
    assert handle.state is WorkerState.STOPPED
    assert handle.deadline is None
    assert handle.restarts_by_reason == {"killed": 1}


def test_launcher_failure_is_a_boot_failure_retried_with_backoff(handle: WorkerSlot) -> None:
    launcher(handle).fail_with = OSError(24, "Too many open files")
    run(handle.start(0.0, "test"))
    assert handle.state is WorkerState.BOOT_FAILED
    assert handle.deadline == pytest.approx(0.5)
    assert handle.last_exit is not None
    assert "Too many open files" in handle.last_exit.log_tail[0]
    launcher(handle).fail_with = None
    run(handle.on_deadline(0.5))
    assert handle.state is WorkerState.STARTING


def test_a_closed_pipe_skips_the_shutdown_message(handle: WorkerSlot) -> None:
    run(handle.start(0.0, "test"))
    register(handle, 0.1)
    process = launcher(handle).started[0]
    process.pipe_open = False
    run(handle.request_stop(StopReason.STOP, 1.0, restart=False))
    assert process.group_signals == [signal.SIGTERM]
    assert handle.deadline == pytest.approx(1.0 + SUPERVISION["kill_timeout_s"])


def test_hung_worker_gets_sigabrt_alone_then_sigkill_for_the_group(handle: WorkerSlot) -> None:
    run(handle.start(0.0, "test"))
    register(handle, 0.1)
    process = launcher(handle).started[0]
    assert handle.deadline == pytest.approx(3.1)
    run(handle.on_deadline(3.1))
    assert handle.state is WorkerState.STOPPING
    assert process.signals == [signal.SIGABRT]
    assert process.group_signals == []
    run(handle.on_deadline(5.1))
    assert process.group_signals == [signal.SIGKILL]
    die(handle, -9, 5.2)
    assert handle.last_exit is not None
    assert handle.last_exit.reason == "heartbeat_timeout"
    assert handle.state is WorkerState.STARTING  # a failure, but the first: at once


def test_graceful_stop_escalates_term_then_kill(handle: WorkerSlot) -> None:
    run(handle.start(0.0, "test"))
    register(handle, 0.1)
    process = launcher(handle).started[0]
    run(handle.request_stop(StopReason.STOP, 1.0, restart=False))
    assert process.sent[-1] == "master:shutdown"
    run(handle.on_deadline(6.0))
    assert process.group_signals == [signal.SIGTERM]
    run(handle.on_deadline(8.0))
    assert process.group_signals == [signal.SIGTERM, signal.SIGKILL]


def test_every_transition_is_logged_once_and_illegal_ones_refused(handle: WorkerSlot) -> None:
    with capture_logs() as logs:
        run(handle.start(0.0, "test"))
        register(handle, 0.1)
        die(handle, -9, 1.0)
    moves = [(e["old"], e["new"]) for e in logs if e["event"] == "worker state"]
    assert moves == [
        ("stopped", "starting"),
        ("starting", "running"),
        ("running", "exited"),
        ("exited", "starting"),
    ]
    with pytest.raises(IllegalTransition):
        handle._transition(WorkerState.BACKOFF, "not from starting")


def test_the_stop_plan_is_one_value_moved_on_by_its_deadlines(handle: WorkerSlot) -> None:
    run(handle.start(0.0, "test"))
    register(handle, 0.1)
    process = handle.current
    assert process is not None
    run(handle.request_stop(StopReason.RESTART, 1.0, restart=True))
    assert process.stop_plan == StopPlan(
        StopReason.RESTART, StopStage.ASKED, None, 6.0, AfterStop.RESTART
    )
    # A later stop cancels the restart and keeps the stage and deadline.
    run(handle.request_stop(StopReason.STOP, 2.0, restart=False))
    assert process.stop_plan == StopPlan(
        StopReason.RESTART, StopStage.ASKED, None, 6.0, AfterStop.STAY_STOPPED
    )
    run(handle.on_deadline(6.0))
    assert process.stop_plan == StopPlan(
        StopReason.RESTART, StopStage.SIGNALLED, signal.SIGTERM, 8.0, AfterStop.STAY_STOPPED
    )
    run(handle.on_deadline(8.0))
    assert process.stop_plan == StopPlan(
        StopReason.RESTART, StopStage.KILLED, signal.SIGKILL, 10.0, AfterStop.STAY_STOPPED
    )
    die(handle, -9, 8.5)
    assert handle.state is WorkerState.STOPPED
    assert handle.last_exit is not None
    assert handle.last_exit.reason == "restart"
    assert not handle.last_exit.is_failure


def test_a_second_signal_kills_every_process_of_the_slot(handle: WorkerSlot) -> None:
    run(handle.start(0.0, "test"))
    register(handle, 0.1)
    run(handle.shut_down(1.0))
    process = launcher(handle).started[0]
    assert process.sent[-1] == "master:shutdown"
    handle.kill_now(1.5)
    assert process.group_signals == [signal.SIGKILL]
    assert handle.current is not None
    plan = handle.current.stop_plan
    assert plan is not None
    assert (plan.reason, plan.stage, plan.then) == (
        StopReason.SHUTDOWN,
        StopStage.KILLED,
        AfterStop.STAY_STOPPED,
    )


def test_a_worker_is_told_the_store_s_retention_at_boot(tmp_path: Path) -> None:
    """So it forgets what the store drops (a collection not named: kept forever)."""
    config = Config.model_validate(
        {"state_dir": str(tmp_path), "retention": {"messages": 30, "comments": 0.5}}
    )
    slot = WorkerSlot("worker1", config, FakeLauncher(), lambda event: None, structlog.get_logger())
    assert slot.boot().retention_days == {"messages": 30, "comments": 0.5}
