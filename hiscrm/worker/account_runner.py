"""One account's task inside a worker: runs the platform and restarts it with backoff.

The worker supervises its account tasks the way the master supervises workers: a ``run``
that raises or returns is logged, counted, reported to the master, and started again (a
fresh platform instance) after the backoff delay.

States::

    running --(run raised or returned)--> backoff --(delay over)--> running
    running | backoff --(stop)--> stopping --> stopped
"""

import asyncio
import time
from collections.abc import Callable
from enum import StrEnum

from structlog.typing import FilteringBoundLogger

from hiscrm.backoff import RestartBackoff
from hiscrm.models import AccountSpec
from hiscrm.platforms.base import Platform
from hiscrm.worker.context import AccountContext
from hiscrm.worker.error_reporter import ErrorReporter
from hiscrm.worker.exception_text import describe_exception


class AccountState(StrEnum):
    RUNNING = "running"
    BACKOFF = "backoff"
    STOPPING = "stopping"
    STOPPED = "stopped"


_ALLOWED: dict[AccountState, frozenset[AccountState]] = {
    AccountState.STOPPED: frozenset({AccountState.RUNNING}),
    AccountState.RUNNING: frozenset({AccountState.BACKOFF, AccountState.STOPPING}),
    AccountState.BACKOFF: frozenset({AccountState.RUNNING, AccountState.STOPPING}),
    AccountState.STOPPING: frozenset({AccountState.STOPPED}),
}


MAX_REASON_CHARS = 500


class RunReturned(Exception):
    """A platform's ``run`` returned although the account was still assigned."""


class TaskEnded(Exception):
    """The account's supervising task ended while it should still be running."""


class AccountRunner:
    def __init__(
        self,
        account: AccountSpec,
        platform: type[Platform],
        backoff: RestartBackoff,
        errors: ErrorReporter,
        on_state: Callable[["AccountRunner", str], None],
        context: AccountContext,
        log: FilteringBoundLogger,
    ) -> None:
        self.account = account
        self._platform = platform
        self._backoff = backoff
        self._errors = errors
        self._on_state = on_state
        self._log = log.bind(account_id=account.id)
        self.context = context
        self.state = AccountState.STOPPED
        self.restarts = 0
        self._task: asyncio.Task[None] | None = None

    def _transition(self, new: AccountState, reason: str) -> None:
        reason = reason if len(reason) <= MAX_REASON_CHARS else reason[:MAX_REASON_CHARS] + " …"
        old = self.state
        if new not in _ALLOWED[old]:
            raise RuntimeError(f"account {self.account.id}: illegal transition {old} -> {new}")
        self.state = new
        self._log.info("account state", old=str(old), new=str(new), reason=reason)
        self._on_state(self, reason)

    def start(self) -> None:
        self._transition(AccountState.RUNNING, "assigned")
        self._task = asyncio.create_task(self._supervise(), name=f"account:{self.account.id}")
        self._task.add_done_callback(self._task_ended)

    def _task_ended(self, task: "asyncio.Task[None]") -> None:
        """The supervising loop only ends when stopped; anything else is reported."""
        if self.state in (AccountState.STOPPING, AccountState.STOPPED):
            return
        exc = None if task.cancelled() else task.exception()
        self._errors.report(
            "account",
            exc or TaskEnded("account task ended unexpectedly"),
            account_id=self.account.id,
        )

    async def _supervise(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self._platform().run(self.context)
                raise RunReturned(f"{self._platform.__name__}.run() returned")
            except asyncio.CancelledError as exc:
                this_task = asyncio.current_task()
                if this_task is not None and this_task.cancelling():
                    raise  # we are being stopped
                # A CancelledError leaking out of platform code (an awaited helper that
                # was cancelled) is a failure of the platform, not a stop.
                self._errors.report("account", exc, account_id=self.account.id)
                reason = "CancelledError escaped from run()"
            except Exception as exc:
                if not getattr(exc, "reported", False):  # InvalidItem is reported at upsert
                    self._errors.report("account", exc, account_id=self.account.id)
                reason = describe_exception(exc)
            if self.state is not AccountState.RUNNING:  # it failed while being stopped
                return
            self.restarts += 1
            delay = self._backoff.record_failure(time.monotonic() - started)
            self._transition(AccountState.BACKOFF, f"{reason}; restart in {delay:.2f}s")
            await asyncio.sleep(delay)
            self._transition(AccountState.RUNNING, f"restart {self.restarts}")

    async def stop(self, reason: str, timeout_s: float) -> None:
        """Cancel the platform and wait up to ``timeout_s`` for it to finish."""
        if self.state in (AccountState.STOPPING, AccountState.STOPPED) or self._task is None:
            return
        self._transition(AccountState.STOPPING, reason)
        self._task.cancel()
        done, _ = await asyncio.wait({self._task}, timeout=timeout_s)
        if not done:  # a task left running behind our back: logged, counted, reported
            self._errors.report(
                "account",
                TimeoutError(f"the task ignored cancellation for {timeout_s}s; abandoning it"),
                account_id=self.account.id,
            )
        self._transition(AccountState.STOPPED, reason)
