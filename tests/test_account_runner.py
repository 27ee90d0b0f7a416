"""An account's task in its worker, without processes: a platform that cannot run is
``failed`` and not restarted; a supervising task that ends while it should run (a bug
outside the platform's call) is reported and started again, never left ``running``."""

import asyncio
from types import SimpleNamespace
from typing import Any, cast

import structlog
from test_platform_data import Sent
from testplatforms.failing import BrokenInit

from hiscrm.backoff import RestartBackoff
from hiscrm.models import AccountSpec
from hiscrm.platforms.base import Platform, PlatformContext
from hiscrm.platforms.loader import PlatformLoadError
from hiscrm.worker.account_runner import AccountRunner, AccountState
from hiscrm.worker.context import AccountContext
from hiscrm.worker.error_reporter import ErrorReporter
from hiscrm.worker.platform_set import failure

DEADLINE_S = 5.0


class FailsOnceThenRuns:
    runs = 0

    async def run(self, ctx: PlatformContext) -> None:
        FailsOnceThenRuns.runs += 1
        if FailsOnceThenRuns.runs == 1:
            raise ValueError("first run fails")
        await asyncio.Event().wait()


class Runs:
    async def run(self, ctx: PlatformContext) -> None:
        await asyncio.Event().wait()


class Harness:
    def __init__(self, platform: Any, platform_name: str = "demo") -> None:
        self.sent = Sent()
        self.states: list[tuple[str, str]] = []
        self.raise_on: set[AccountState] = set()  # on_state raises once on entering these
        log = structlog.get_logger()
        context = cast(AccountContext, SimpleNamespace(options={}))
        self.runner = AccountRunner(
            AccountSpec(id="acc", platform=platform_name),
            platform,
            RestartBackoff(0.01, 0.05, 60.0),
            ErrorReporter(self.sent, log),
            self.on_state,
            context,
            log,
        )

    def on_state(self, runner: AccountRunner, reason: str) -> None:
        self.states.append((str(runner.state), reason))
        if runner.state in self.raise_on:
            self.raise_on.discard(runner.state)
            raise RuntimeError(f"a bug on entering {runner.state}")

    async def until(self, predicate: Any, what: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEADLINE_S
        while not predicate():
            assert loop.time() < deadline, f"not within {DEADLINE_S}s: {what}; {self.states}"
            await asyncio.sleep(0.005)


def test_a_task_that_ends_outside_the_platform_call_is_reported_and_restarted() -> None:
    async def scenario() -> None:
        FailsOnceThenRuns.runs = 0
        h = Harness(cast(type[Platform], FailsOnceThenRuns))
        h.raise_on = {AccountState.BACKOFF}  # the supervising task dies there
        h.runner.start()
        await h.until(lambda: FailsOnceThenRuns.runs == 2, "the second run")
        assert h.runner.state is AccountState.RUNNING
        assert [state for state, _ in h.states] == ["running", "backoff", "running"]
        assert [e.source for e in h.sent.errors] == ["account", "account task"]
        assert h.sent.errors[1].error_type == "RuntimeError"
        assert h.sent.errors[1].message == "a bug on entering backoff"
        assert h.runner.restarts == 2
        await h.runner.stop("done", 1.0)
        assert h.runner.state is AccountState.STOPPED

    asyncio.run(scenario())


def test_a_task_cancelled_by_someone_else_does_not_stay_running() -> None:
    async def scenario() -> None:
        h = Harness(cast(type[Platform], Runs))
        h.runner.start()
        await asyncio.sleep(0.01)
        task = h.runner._task
        assert task is not None
        task.cancel()  # not a stop: nobody asked the runner
        await h.until(lambda: len(h.states) >= 3, "backoff and running again")
        assert [state for state, _ in h.states] == ["running", "backoff", "running"]
        assert "its task ended (TaskEnded: the account's task was cancelled" in h.states[1][1]
        assert h.runner._task is not None
        assert h.runner._task is not task
        assert [e.source for e in h.sent.errors] == ["account task"]
        await h.runner.stop("done", 1.0)
        assert h.runner.state is AccountState.STOPPED

    asyncio.run(scenario())


def test_a_class_that_cannot_be_constructed_fails_its_account_for_good() -> None:
    async def scenario() -> None:
        h = Harness(cast(type[Platform], BrokenInit), "testplatforms.failing:BrokenInit")
        h.runner.start()
        await h.until(lambda: h.runner.state is AccountState.FAILED, "failed")
        for _ in range(20):  # no restart follows
            await asyncio.sleep(0.005)
        assert [state for state, _ in h.states] == ["running", "failed"]
        reason = h.states[-1][1]
        assert reason.splitlines()[-1] == (
            "platform 'testplatforms.failing:BrokenInit' cannot be constructed: "
            "RuntimeError: BrokenInit cannot be constructed"
        )
        assert "Traceback (most recent call last)" in reason
        assert len(h.sent.errors) == 1
        assert h.runner.restarts == 0
        await h.runner.stop("revoked", 1.0)
        assert [state for state, _ in h.states][-2:] == ["stopping", "stopped"]

    asyncio.run(scenario())


def test_a_platform_that_did_not_load_is_failed_at_once() -> None:
    async def scenario() -> None:
        why = failure("x.y:Z", PlatformLoadError("x.y:Z", "no module named 'x'"), "be loaded")
        h = Harness(why)
        h.runner.start()
        assert h.runner.state is AccountState.FAILED
        assert h.states == [("failed", why.reason)]
        assert why.reason.endswith("platform 'x.y:Z' cannot be loaded: no module named 'x'")
        assert h.runner._task is None
        await h.runner.stop("revoked", 1.0)
        assert h.runner.state is AccountState.STOPPED

    asyncio.run(scenario())
