"""What the API may do in the master: operator actions and the one write of its own.

Actions never change supervisor state here: they are typed commands handed to the
supervisor, one at a time per worker, answered once they have settled. Marking an item
read is a write, and goes to the store.
"""

import asyncio
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

from hiscrm.config import Config
from hiscrm.items import epoch_ms
from hiscrm.master.api.errors import ApiError
from hiscrm.master.api.read_model import NotFound, ReadModel, reload_result
from hiscrm.master.api.schemas import (
    AccountInfo,
    ReloadResult,
    ShutdownStarted,
    SyncRequested,
    WorkerAction,
)
from hiscrm.master.data.routed import RoutingFailed
from hiscrm.master.data.store import Row, Store
from hiscrm.master.state_dir import StateDir
from hiscrm.master.supervision.commands import (
    ReleaseAccount,
    ReloadWorkers,
    RestartWorker,
    ShutDown,
    StartWorker,
    StopWorker,
    SyncAccount,
    WorkerCommand,
)
from hiscrm.master.supervision.rolling_reload import RollingReload
from hiscrm.master.supervision.supervisor import Supervisor

if TYPE_CHECKING:
    from hiscrm.master.data.command_router import CommandRouter

WORKER_COMMANDS: dict[str, type[WorkerCommand]] = {
    "start": StartWorker,
    "stop": StopWorker,
    "restart": RestartWorker,
}


class Control:
    def __init__(self, supervisor: Supervisor, read: ReadModel, store: Store) -> None:
        self._supervisor = supervisor
        self._read = read
        self._store = store
        self._config: Config = supervisor.config
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.router: CommandRouter | None = None  # a cluster: to the account's master

    @property
    def master_log(self) -> Path:
        return StateDir(self._config.state_dir).master_log

    def action_timeout_s(self) -> float:
        """Long enough for a stop that escalates to SIGKILL and a start that times out."""
        sup = self._config.supervision
        return sup.stop_timeout_s + 2 * sup.kill_timeout_s + sup.start_timeout_s + 5

    def reload_timeout_s(self) -> float:
        return self.action_timeout_s() * max(1, len(self._supervisor.slots))

    async def act(self, worker_id: str, action: str) -> WorkerAction:
        """stop / start / restart, one at a time per worker; answers with the result."""
        slot = self._read.slot(worker_id)
        command = WORKER_COMMANDS[action](worker_id)
        async with self._locks[worker_id]:
            previous = slot.pid
            began = time.monotonic()
            async with asyncio.timeout(self.action_timeout_s()):
                await self._supervisor.command(command)
            return WorkerAction(
                action=action,
                previous_pid=previous,
                took_s=round(time.monotonic() - began, 3),
                worker=self._read.worker(worker_id),
            )

    async def reload(self) -> ReloadResult:
        async with asyncio.timeout(self.reload_timeout_s()):
            rollout: RollingReload = await self._supervisor.command(ReloadWorkers())
        return reload_result(rollout)

    async def shutdown(self) -> ShutdownStarted:
        """Stop every worker, then the master; answers once that has begun."""
        reason: str = await self._supervisor.command(ShutDown())
        return ShutdownStarted(pid=os.getpid(), workers=len(self._supervisor.slots), reason=reason)

    async def request_sync(self, account_id: str, from_seq: int | None) -> SyncRequested:
        """Asked of the master that holds the account (in a cluster, maybe another)."""
        self._read.account(account_id)  # NotFound first
        router = self.router
        if router is None or router.holds(account_id):
            return await self.sync_here(account_id, from_seq)
        try:
            node, result = await router.request(account_id, "sync", {"from_seq": from_seq})
        except RoutingFailed as exc:
            raise ApiError(exc.status, str(exc)) from None
        return SyncRequested.model_validate({**result, "node": node})

    async def sync_here(self, account_id: str, from_seq: int | None) -> SyncRequested:
        worker: str = await self._supervisor.command(SyncAccount(account_id, from_seq))
        node = None if self.router is None else self.router.node_id
        return SyncRequested(account_id=account_id, worker=worker, from_seq=from_seq, node=node)

    async def release(self, account_id: str) -> AccountInfo:
        """Lift the account's quarantine, by the master that holds it (in a cluster,
        maybe another: the answer is that master's view of the account, naming it)."""
        self._read.account(account_id)  # NotFound first
        router = self.router
        if router is None or router.holds(account_id):
            return await self.release_here(account_id)
        try:
            node, result = await router.request(account_id, "account.release", {})
        except RoutingFailed as exc:
            raise ApiError(exc.status, str(exc)) from None
        return AccountInfo.model_validate({**result, "node": node})

    async def release_here(self, account_id: str) -> AccountInfo:
        await self._supervisor.command(ReleaseAccount(account_id))
        return self._read.account(account_id)

    async def mark_read(self, collection: str, account_id: str, item_id: str) -> Row:
        self._read.account(account_id)
        row = await self._store.mark_read(collection, account_id, item_id, epoch_ms())
        if row is None:
            raise NotFound(f"no {collection[:-1]} {item_id!r} in account {account_id!r}")
        return row
