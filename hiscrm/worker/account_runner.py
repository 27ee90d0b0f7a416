"""One account's task inside a worker: runs the platform and restarts it with backoff.

The worker supervises its account tasks the way the master supervises workers: a ``run``
that raises (anything: ``SystemExit``, ``KeyboardInterrupt`` and ``GeneratorExit``
included) or returns is logged, counted, reported to the master, and started again (a
fresh platform instance) after the backoff delay. The worker and its other accounts are
not affected.

An account whose platform cannot run in this process (it did not load, or its class
raised the first time it was constructed) is ``failed``: reported with the traceback's
end, and not started again by this process (see ``platform_set``).

Beside ``run``, the account may have tasks of its own: a reply being sent
(``reply_send``) calls the instance whose ``run`` is awaited (``instance``). They run
beside it, not in its way: a send that takes long holds up neither ``run`` nor the
worker; ``run`` failing does not end a send already under way. Stopping the account
cancels them with its task and waits for them as long as for it.

If the supervising task itself ends while the account should run (a bug outside the
platform's call), the account does not stay ``running``: the end is reported and the
task is started again after the backoff delay.

States::

    stopped --start--> running --(run raised or returned)--> backoff --(delay over)--> running
    running --(its task ended)--> backoff --(delay over)--> running
    stopped --start, platform not loaded--> failed
    running --(its class raised when first constructed)--> failed
    running | backoff | failed --(stop)--> stopping --> stopped
"""

import asyncio
import time
from collections.abc import Callable, Coroutine
from enum import StrEnum

from structlog.typing import FilteringBoundLogger

from hiscrm.backoff import RestartBackoff
from hiscrm.models import AccountSpec
from hiscrm.platform_names import resolve_platform_name
from hiscrm.platforms.base import Platform
from hiscrm.worker.account_data import InvalidItem
from hiscrm.worker.context import AccountContext
from hiscrm.worker.error_reporter import ErrorReporter
from hiscrm.worker.exception_text import cut, describe_exception
from hiscrm.worker.platform_set import PlatformFailure, failure


class AccountState(StrEnum):
    RUNNING = "running"
    BACKOFF = "backoff"
    FAILED = "failed"
    STOPPING = "stopping"
    STOPPED = "stopped"


_ALLOWED: dict[AccountState, frozenset[AccountState]] = {
    AccountState.STOPPED: frozenset({AccountState.RUNNING, AccountState.FAILED}),
    AccountState.RUNNING: frozenset(
        {AccountState.BACKOFF, AccountState.FAILED, AccountState.STOPPING}
    ),
    AccountState.BACKOFF: frozenset({AccountState.RUNNING, AccountState.STOPPING}),
    AccountState.FAILED: frozenset({AccountState.STOPPING}),
    AccountState.STOPPING: frozenset({AccountState.STOPPED}),
}


MAX_REASON_CHARS = 500

# (runner, reason to send): the reason is the logged one, or longer (a traceback's end).
StateListener = Callable[["AccountRunner", str], None]


class RunReturned(Exception):
    """A platform's ``run`` returned although the account was still assigned."""


class TaskEnded(Exception):
    """The account's supervising task ended while it should still be running."""


class AccountRunner:
    def __init__(
        self,
        account: AccountSpec,
        platform: type[Platform] | PlatformFailure,
        backoff: RestartBackoff,
        errors: ErrorReporter,
        on_state: StateListener,
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
        self._constructed = False  # its class has been constructed once
        self._task: asyncio.Task[None] | None = None
        self.instance: Platform | None = None  # the one whose ``run`` is awaited, if any
        self._beside: set[asyncio.Task[None]] = set()  # sends under way
        self._resume: asyncio.TimerHandle | None = None  # its task ended: when to start again
        self._run_began = time.monotonic()

    @property
    def platform(self) -> type[Platform] | PlatformFailure:
        return self._platform

    def _transition(self, new: AccountState, reason: str, sent: str | None = None) -> None:
        reason = cut(reason, MAX_REASON_CHARS)
        old = self.state
        if new not in _ALLOWED[old]:
            raise RuntimeError(f"account {self.account.id}: illegal transition {old} -> {new}")
        self.state = new
        self._log.info("account state", old=str(old), new=str(new), reason=reason)
        self._on_state(self, sent if sent is not None else reason)

    def start(self) -> None:
        if isinstance(self._platform, PlatformFailure):
            self._fail(self._platform)
            return
        self._transition(AccountState.RUNNING, "assigned")
        self._start_task()

    def _start_task(self) -> None:
        self._resume = None
        self._task = asyncio.create_task(self._supervise(), name=f"account:{self.account.id}")
        self._task.add_done_callback(self._task_ended)

    def _fail(self, why: PlatformFailure) -> None:
        self._log.error("account cannot run: its platform failed", error=why.summary)
        self._transition(AccountState.FAILED, why.summary, sent=why.reason)

    # --- the supervising task ------------------------------------------------------------

    async def _supervise(self) -> None:
        platform = self._platform
        assert not isinstance(platform, PlatformFailure)
        while True:
            if self.state is AccountState.BACKOFF:
                self._transition(AccountState.RUNNING, f"restart {self.restarts}")
            self._run_began = time.monotonic()
            # One attempt inline, not in a helper: a faulthandler dump of a crash in the
            # platform is a frame shorter, so the end of the log still shows its frame.
            try:
                instance = platform()
            except BaseException as exc:  # whatever a constructor raises stays in this account
                self._errors.report("account", exc, account_id=self.account.id)
                if not self._constructed:  # it cannot run at all: failed, not restarted
                    spec = resolve_platform_name(self.account.platform)
                    self._fail(failure(spec, exc, "be constructed"))
                    return
                reason = f"constructing {platform.__qualname__}: {describe_exception(exc)}"
            else:
                self._constructed = True
                self.instance = instance
                try:
                    await instance.run(self.context)
                    raise RunReturned(f"{platform.__qualname__}.run() returned")
                except asyncio.CancelledError as exc:
                    this_task = asyncio.current_task()
                    if this_task is not None and this_task.cancelling():
                        raise  # we are being stopped
                    # A CancelledError leaking out of platform code (an awaited helper
                    # that was cancelled) is a failure of the platform, not a stop.
                    self._errors.report("account", exc, account_id=self.account.id)
                    reason = "CancelledError escaped from run()"
                except BaseException as exc:  # SystemExit, KeyboardInterrupt, GeneratorExit too
                    if not (isinstance(exc, InvalidItem) and exc.reported):  # at the upsert
                        self._errors.report("account", exc, account_id=self.account.id)
                    reason = describe_exception(exc)
                finally:
                    self.instance = None
            if self.state is not AccountState.RUNNING:  # it failed while being stopped
                return
            self.restarts += 1
            delay = self._backoff.record_failure(time.monotonic() - self._run_began)
            self._transition(AccountState.BACKOFF, f"{reason}; restart in {delay:.2f}s")
            await asyncio.sleep(delay)

    def _task_ended(self, task: "asyncio.Task[None]") -> None:
        """The supervising task only ends when stopped or failed for good; any other end
        is reported, and the task starts again after the backoff delay."""
        if task is not self._task:
            return
        self._task = None
        if self.state not in (AccountState.RUNNING, AccountState.BACKOFF):
            return
        self.restarts += 1
        delay = self._backoff.record_failure(time.monotonic() - self._run_began)
        # First the restart, so that nothing below can leave the account without one.
        self._resume = asyncio.get_running_loop().call_later(delay, self._start_task)
        if task.cancelled():
            error: BaseException = TaskEnded("the account's task was cancelled by someone else")
        else:
            exc = task.exception()
            error = exc if exc is not None else TaskEnded("the account's task returned")
        self._errors.report("account task", error, account_id=self.account.id)
        reason = f"its task ended ({describe_exception(error)}); restart in {delay:.2f}s"
        if self.state is AccountState.RUNNING:
            self._transition(AccountState.BACKOFF, reason)
        else:
            self._log.warning("account task ended during its backoff", reason=reason)

    # --- tasks beside run -----------------------------------------------------------------

    def start_beside(self, coro: Coroutine[None, None, None], source: str, name: str) -> None:
        """Run ``coro`` as a task of this account beside its ``run``: cancelled with it
        when the account stops. ``coro`` handles its own failures; one that escapes all
        the same (a bug outside the platform's call) is reported as from ``source``."""
        task = asyncio.create_task(coro, name=name)
        self._beside.add(task)
        task.add_done_callback(lambda t: self._beside_ended(t, source))

    def _beside_ended(self, task: "asyncio.Task[None]", source: str) -> None:
        self._beside.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            assert exc is not None
            self._errors.report(source, exc, account_id=self.account.id)

    async def stop(self, reason: str, timeout_s: float) -> None:
        """Cancel the platform and what runs beside it, and wait up to ``timeout_s`` for
        them to finish."""
        if self.state in (AccountState.STOPPING, AccountState.STOPPED):
            return
        self._transition(AccountState.STOPPING, reason)
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        tasks = {t for t in (self._task, *self._beside) if t is not None and not t.done()}
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout_s)
            for task in pending:  # left running behind our back: logged, counted, reported
                what = "the task" if task is self._task else f"task {task.get_name()}"
                self._errors.report(
                    "account",
                    TimeoutError(f"{what} ignored cancellation for {timeout_s}s; abandoning it"),
                    account_id=self.account.id,
                )
        self._transition(AccountState.STOPPED, reason)
