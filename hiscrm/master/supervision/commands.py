"""Operator commands (from the API, hiscrmctl, ``--watch``): typed values posted to the
supervisor's queue with a future for the answer. The supervisor completes each one from
the event that settles it: a worker command when its slot reaches a settled state, a
reload when the reload ends, a sync request at once."""

import asyncio
from typing import Any

import msgspec

from hiscrm.config import Config
from hiscrm.models import AccountSpec


class CommandRefused(Exception):
    """An operator's action that cannot be carried out now (the reason says why)."""


class StartWorker(msgspec.Struct, frozen=True):
    worker_id: str


class StopWorker(msgspec.Struct, frozen=True):
    worker_id: str


class RestartWorker(msgspec.Struct, frozen=True):
    worker_id: str


class ReloadWorkers(msgspec.Struct, frozen=True):
    why: str = "requested"  # for the log: SIGHUP, requested (API), --watch


class ShutDown(msgspec.Struct, frozen=True):
    """Stop every worker, then the master (as SIGTERM does); answered once begun."""

    why: str = "requested"  # for the log and the service manager's status


class SyncAccount(msgspec.Struct, frozen=True):
    account_id: str
    from_seq: int | None = None


class ReleaseAccount(msgspec.Struct, frozen=True):
    """Lift an account's quarantine (its placement goes back to normal)."""

    account_id: str


class AddAccount(msgspec.Struct, frozen=True):
    """Run a new account (already in the store's registry)."""

    account: AccountSpec
    source: str  # config or api


class ChangeAccount(msgspec.Struct, frozen=True):
    """Its options, platform or enabled changed: its task restarts with them."""

    account: AccountSpec


class RemoveAccount(msgspec.Struct, frozen=True):
    """Stop running it; answered once its worker has let it go."""

    account_id: str


class ApplyConfig(msgspec.Struct, frozen=True):
    """A re-read configuration: its settings for the decisions that follow, and its
    number of workers (accounts come as the commands above)."""

    config: Config


WorkerCommand = StartWorker | StopWorker | RestartWorker
AccountCommand = AddAccount | ChangeAccount | RemoveAccount | ReleaseAccount | SyncAccount
Command = WorkerCommand | ReloadWorkers | AccountCommand | ApplyConfig | ShutDown


class CommandRequest(msgspec.Struct, frozen=True, eq=False):
    command: Command
    reply: "asyncio.Future[Any]"  # equal only to itself (eq=False)

    def answer(self, result: Any) -> None:
        if not self.reply.done():  # the caller may have given up already
            self.reply.set_result(result)

    def refuse(self, exc: BaseException) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc)
