"""The accounts a worker runs: loading each one, running its platform, syncing its
changes, and letting it go.

An assigned account starts from what the store holds (the digest that follows the
assignment) plus what its spool still has; only then does its platform start. A revoked
account stops its platform, flushes its changes and waits for the master to acknowledge
them (up to a limit; what is left stays in the spool for the next owner), releases the
spool, and answers ``worker:account:released``.

A reply (``master:send``) goes to the account's platform in a task of the account's
runner, beside its ``run``; see ``reply_send`` for what is checked first and what is
answered.

An account whose platform could not be loaded starts all the same, as ``failed`` (see
``platform_set``): its spool is loaded and synced, so what a previous owner left is not
lost.
"""

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Literal, cast

import msgspec
from structlog.typing import FilteringBoundLogger

from hiscrm.backoff import RestartBackoff
from hiscrm.items import epoch_ms
from hiscrm.models import AccountSpec
from hiscrm.platform_names import resolve_platform_name
from hiscrm.platforms.base import Platform, Sender
from hiscrm.protocol import (
    AnyMessage,
    MasterAccountAssign,
    MasterAccountDigest,
    MasterSend,
    WorkerAccountReleased,
    WorkerAccountState,
    WorkerBoot,
)
from hiscrm.worker.account_data import AccountData
from hiscrm.worker.account_runner import AccountRunner, AccountState
from hiscrm.worker.context import AccountContext
from hiscrm.worker.error_reporter import ErrorReporter
from hiscrm.worker.platform_set import PlatformFailure, PlatformSet
from hiscrm.worker.reply_send import cannot_send, result, send_reply, target_problem
from hiscrm.worker.spool import Spool, SpoolBusy
from hiscrm.worker.sync import Syncer

SPOOL_RETRY_S = 1.0  # the previous owner still holds the spool
SPOOL_FAILED_RETRY_S = 10.0  # the spool cannot be read


class SpoolDamaged(Exception):
    """Lines of an account's spool could not be read back."""


class _Loading(msgspec.Struct):
    account: AccountSpec
    acked_seq: int
    digest_total: int
    digest: list[tuple[str, str, int, str]] = msgspec.field(default_factory=list)
    retry: asyncio.TimerHandle | None = None  # waiting for the spool, if busy


class AccountHost:
    def __init__(
        self,
        boot: WorkerBoot,
        platforms: PlatformSet,
        errors: ErrorReporter,
        send: Callable[[AnyMessage], bool],
        syncer: Syncer,
        spawn: Callable[[Coroutine[Any, Any, Any], str], "asyncio.Task[Any]"],
        log: FilteringBoundLogger,
    ) -> None:
        self._boot = boot
        self._platforms = platforms
        self._errors = errors
        self._send = send
        self.syncer = syncer
        self._spawn = spawn
        self._log = log
        self.runners: dict[str, AccountRunner] = {}
        self._loading: dict[str, _Loading] = {}
        self._releasing: set[str] = set()

    # --- assignment ----------------------------------------------------------------------

    def assign(self, message: MasterAccountAssign) -> None:
        account_id = message.account.id
        if account_id in self.runners or account_id in self._loading:
            self._log.warning(
                "assignment of an account already here ignored", account_id=account_id
            )
            return
        self._loading[account_id] = _Loading(
            message.account, message.acked_seq, message.digest_total
        )
        if message.digest_total == 0:
            self._start(account_id)

    def digest(self, message: MasterAccountDigest) -> None:
        loading = self._loading.get(message.account_id)
        if loading is None:
            raise LookupError(
                f"digest for account {message.account_id!r}, which is not being assigned"
            )
        loading.digest += message.entries
        if len(loading.digest) >= loading.digest_total:
            self._start(message.account_id)

    def _start(self, account_id: str) -> None:
        loading = self._loading.get(account_id)
        if loading is None or len(loading.digest) < loading.digest_total:
            return  # revoked while it waited, or the digest is not complete yet
        loading.retry = None
        account = loading.account
        spool = Spool(Path(self._boot.spool_dir) / account_id)
        data = AccountData(account_id, spool, self._boot.retention_days)
        try:
            report = data.load(loading.acked_seq, loading.digest)
        except SpoolBusy as exc:  # its previous owner has not let go yet: expected, brief
            data.close()
            self._log.info("spool still held; retrying", account_id=account_id, detail=str(exc))
            loading.retry = asyncio.get_running_loop().call_later(
                SPOOL_RETRY_S, self._start, account_id
            )
            return
        except Exception as exc:  # unreadable spool, disk error: reported, retried slowly
            data.close()
            self._errors.report("spool", exc, account_id=account_id)
            loading.retry = asyncio.get_running_loop().call_later(
                SPOOL_FAILED_RETRY_S, self._start, account_id
            )
            return
        del self._loading[account_id]
        if report.corrupt or report.torn_bytes:
            problem = (
                f"{report.corrupt} unreadable lines, {report.torn_bytes} bytes of a torn last line"
            )
            self._errors.report("spool", SpoolDamaged(problem), account_id=account_id)
        self._log.info(
            "account loaded",
            account_id=account_id,
            acked_seq=loading.acked_seq,
            items=len(data.known),
            replayed=report.replayed,
        )
        if report.renumbered or report.store_won:  # another host ran the account meanwhile
            self._log.info(
                "spool replayed after another host",
                account_id=account_id,
                renumbered=report.renumbered,
                store_won=report.store_won,
                skipped=report.skipped,
            )
        self.syncer.add(data)
        if report.replayed:
            self.syncer.changed(account_id, urgent=True)
        platform = self._platform(account.platform)  # or why it cannot run here
        backoff = RestartBackoff(
            self._boot.backoff_initial_s, self._boot.backoff_max_s, self._boot.backoff_reset_after_s
        )
        log = self._log.bind(account_id=account_id)
        context = AccountContext(account, log, data, self.syncer.changed, self._errors)
        runner = AccountRunner(
            account, platform, backoff, self._errors, self._account_state, context, self._log
        )
        self.runners[account_id] = runner
        runner.start()

    def _platform(self, name: str) -> type[Platform] | PlatformFailure:
        found = self._platforms.find(name)
        if found is not None:
            return found
        spec = resolve_platform_name(name)  # not known at this worker's start (an API account)
        self._log.warning("importing a platform at its first assignment", platform=spec)
        found = self._platforms.load(spec)
        if isinstance(found, PlatformFailure):
            self._errors.report(f"loading platform {spec}", found.error)
        return found

    def _account_state(self, runner: AccountRunner, reason: str) -> None:
        self._send(
            WorkerAccountState(
                account_id=runner.account.id,
                state=str(runner.state),
                restarts=runner.restarts,
                reason=reason,
            )
        )
        if runner.state is AccountState.STOPPED and self.runners.get(runner.account.id) is runner:
            del self.runners[runner.account.id]

    # --- replies -------------------------------------------------------------------------

    def send(self, message: MasterSend) -> None:
        """Hand a reply to the account's platform, in a task of its own (``reply_send``)."""
        account_id = message.account_id
        runner = self.runners.get(account_id)
        why_not = self._not_here(account_id, runner)
        if why_not is not None:
            self._refuse(message, "not_sent", why_not)
            return
        assert runner is not None
        platform = runner.platform
        assert not isinstance(platform, PlatformFailure)  # the account is not here then
        problem = cannot_send(platform)
        if problem is not None:
            self._refuse(message, "failed", problem)
            return
        instance = runner.instance
        if instance is None:  # between two runs of its platform
            now = "starting" if runner.state is AccountState.RUNNING else f"in {runner.state}"
            self._refuse(message, "not_sent", f"account {account_id!r} is {now} in this worker")
            return
        problem = target_problem(self.syncer.accounts[account_id], message.action)
        if problem is not None:
            self._refuse(message, "failed", problem)
            return
        runner.start_beside(
            send_reply(
                cast(Sender, instance), runner.context, message, self._errors, self._send, self._log
            ),
            "send",
            f"send:{account_id}:{message.request_id}",
        )

    def _refuse(
        self, message: MasterSend, outcome: Literal["failed", "not_sent"], error: str
    ) -> None:
        """Answer without calling the platform (not sent: it may go again later)."""
        level = self._log.warning if outcome == "failed" else self._log.info
        level(
            "reply not handed to the platform",
            account_id=message.account_id,
            request_id=message.request_id,
            outcome=outcome,
            error=error,
        )
        self._send(result(message, outcome, error=error))

    def _not_here(self, account_id: str, runner: AccountRunner | None) -> str | None:
        """Why the account cannot take a reply in this worker now, or None if it can."""
        if account_id in self._loading:
            return f"account {account_id!r} is still loading in this worker"
        if runner is None:
            return f"account {account_id!r} is not assigned to this worker"
        if account_id in self._releasing or runner.state in (
            AccountState.STOPPING,
            AccountState.STOPPED,
        ):
            return f"account {account_id!r} is being released by this worker"
        if isinstance(runner.platform, PlatformFailure):
            return f"account {account_id!r} cannot run here: {runner.platform.summary}"
        return None

    # --- letting go ----------------------------------------------------------------------

    def revoke(self, account_id: str, timeout_s: float) -> None:
        loading = self._loading.pop(account_id, None)
        if loading is not None and loading.retry is not None:
            loading.retry.cancel()
        if loading is not None or account_id not in self.runners:
            self._send(WorkerAccountReleased(account_id=account_id, unacked=0))
            return
        self._releasing.add(account_id)
        self._spawn(self._release(account_id, timeout_s), f"release:{account_id}")

    async def _release(self, account_id: str, timeout_s: float) -> None:
        try:
            runner = self.runners.get(account_id)
            if runner is not None:
                await runner.stop("revoked", timeout_s / 2)
            left = await self.syncer.flush_and_wait([account_id], timeout_s / 2)
        finally:
            self._releasing.discard(account_id)
        data = self.syncer.remove(account_id)
        if data is not None:
            data.close()
        unacked = left.get(account_id, 0)
        if unacked:
            self._log.warning(
                "account released with unacknowledged changes in its spool",
                account_id=account_id,
                unacked=unacked,
            )
        self._send(WorkerAccountReleased(account_id=account_id, unacked=unacked))

    async def stop_all(self, reason: str, timeout_s: float, *, flush: bool) -> dict[str, int]:
        """Stop every platform; with ``flush``, send what is pending and wait for the
        acknowledgements. Returns what stays unacknowledged (it is in the spool)."""
        for loading in self._loading.values():
            if loading.retry is not None:
                loading.retry.cancel()
        self._loading.clear()
        runners = list(self.runners.values())
        await asyncio.gather(
            *(r.stop(reason, timeout_s / 2 if flush else timeout_s) for r in runners)
        )
        left: dict[str, int] = {}
        if flush:
            left = await self.syncer.flush_and_wait(list(self.syncer.accounts), timeout_s / 2)
        else:
            left = {a: d.unacked for a, d in self.syncer.accounts.items() if d.unacked}
        for account_id in list(self.syncer.accounts):
            data = self.syncer.remove(account_id)
            if data is not None:
                data.close()
        return left

    def progress(self) -> dict[str, int]:
        now_ms = epoch_ms()
        stamps = {a: r.context.stamp_progress(now_ms) for a, r in self.runners.items()}
        return {a: at for a, at in stamps.items() if at is not None}
