"""Operator commands (from the API, hiscrmctl, ``--watch``): typed values posted to the
supervisor's queue with a future for the answer. The supervisor completes each one from
the event that settles it: a worker command when its slot reaches a settled state, a
reload when the reload ends, a sync request at once."""

import asyncio
from dataclasses import dataclass, field
from typing import Any

from hiscrm.config import Config
from hiscrm.models import AccountSpec


class CommandRefused(Exception):
    """An operator's action that cannot be carried out now (the reason says why)."""


@dataclass(frozen=True, slots=True)
class StartWorker:
    worker_id: str


@dataclass(frozen=True, slots=True)
class StopWorker:
    worker_id: str


@dataclass(frozen=True, slots=True)
class RestartWorker:
    worker_id: str


@dataclass(frozen=True, slots=True)
class ReloadWorkers:
    why: str = "requested"  # for the log: SIGHUP, requested (API), --watch


@dataclass(frozen=True, slots=True)
class ShutDown:
    """Stop every worker, then the master (as SIGTERM does); answered once begun."""

    why: str = "requested"  # for the log and the service manager's status


@dataclass(frozen=True, slots=True)
class SyncAccount:
    account_id: str
    from_seq: int | None = None


@dataclass(frozen=True, slots=True)
class ReleaseAccount:
    """Lift an account's quarantine (its placement goes back to normal)."""

    account_id: str


@dataclass(frozen=True, slots=True)
class AddAccount:
    """Run a new account (already in the store's registry)."""

    account: AccountSpec
    source: str  # config or api


@dataclass(frozen=True, slots=True)
class ChangeAccount:
    """Its options, platform or enabled changed: its task restarts with them."""

    account: AccountSpec


@dataclass(frozen=True, slots=True)
class RemoveAccount:
    """Stop running it; answered once its worker has let it go."""

    account_id: str


@dataclass(frozen=True, slots=True)
class ApplyConfig:
    """A re-read configuration: its settings for the decisions that follow, and its
    number of workers (accounts come as the commands above)."""

    config: Config


WorkerCommand = StartWorker | StopWorker | RestartWorker
AccountCommand = AddAccount | ChangeAccount | RemoveAccount | ReleaseAccount | SyncAccount
Command = WorkerCommand | ReloadWorkers | AccountCommand | ApplyConfig | ShutDown


@dataclass(frozen=True, slots=True)
class CommandRequest:
    command: Command
    reply: "asyncio.Future[Any]" = field(compare=False)

    def answer(self, result: Any) -> None:
        if not self.reply.done():  # the caller may have given up already
            self.reply.set_result(result)

    def refuse(self, exc: BaseException) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc)
