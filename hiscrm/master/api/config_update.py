"""``hiscrmctl update`` (``POST /config/update``, SIGHUP before its reload): the config
file read again and applied while the master runs.

The file is checked whole first: a bad one changes nothing and the answer says why. Then
the registry follows the file's accounts (added, changed, removed; see
``data/account_registry``), the running master follows the registry and the new settings
(the number of workers included), and the answer lists every change with when it takes
effect (``config_diff``) and every declaration that conflicts with an account made
through the API.
"""

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from msgspec.structs import asdict
from pydantic import BaseModel
from structlog.typing import FilteringBoundLogger

from hiscrm.config import Config, ConfigError, load_config
from hiscrm.config_diff import RESTART, diff, keep_running
from hiscrm.items import epoch_ms
from hiscrm.master.api.errors import ApiError
from hiscrm.master.data import account_registry
from hiscrm.master.data.account_registry import spec_of
from hiscrm.master.data.store import Store
from hiscrm.master.supervision.commands import (
    AddAccount,
    ApplyConfig,
    ChangeAccount,
    RemoveAccount,
)
from hiscrm.master.supervision.supervisor import Supervisor


class SettingChange(BaseModel):
    key: str
    old: object
    new: object
    applies: str  # now, workers started from now on, needs a master restart


class AccountChanges(BaseModel):
    added: list[str]
    changed: list[str]
    removed: list[str]  # from the registry; their data is kept
    conflicts: list[str]  # declared in the file, but made through the API: left alone


class UpdateResult(BaseModel):
    source: str  # the file read
    settings: list[SettingChange]
    accounts: AccountChanges
    restart_needed: list[str]  # keys that only a master restart applies


class ConfigUpdater:
    def __init__(
        self,
        path: Path | None,
        overrides: dict[str, object],
        supervisor: Supervisor,
        store: Store,
        log: FilteringBoundLogger,
        also: Callable[[Config], Awaitable[None]] | None = None,
    ) -> None:
        self._also = also  # the rest of the master that follows the file (events, hooks)
        self._path = path  # None: the embedded default
        self._overrides = overrides  # command-line flags, which stay in force
        self._supervisor = supervisor
        self._store = store
        self._log = log
        self._lock = asyncio.Lock()
        # What the master started with: the keys only a restart applies keep these values.
        self._started: Config = supervisor.config

    def _removed(self, done: "asyncio.Future[object]") -> None:
        if done.cancelled():
            return
        if (exc := done.exception()) is not None:
            self._log.error("an account removed from the config file was not let go", exc_info=exc)

    async def update(self) -> UpdateResult:
        async with self._lock:  # one at a time
            try:
                new = load_config(self._path, **self._overrides)  # type: ignore[arg-type]
            except ConfigError as exc:
                self._log.error("update refused: the config file is not valid", error=str(exc))
                raise ApiError(422, f"nothing changed: {exc}") from exc
            old: Config = self._supervisor.config
            settings = diff(old, new)
            # Compared with the start, so every update says it until the master restarts.
            restart_needed = [c.key for c in diff(self._started, new) if c.applies == RESTART]
            new = keep_running(self._started, new)  # what the running master can apply
            registry = await self._store.accounts()
            plan = account_registry.plan(new.accounts, registry, epoch_ms())
            for record in (*plan.create, *plan.change):
                await self._store.put_account(record)
            for account_id in plan.remove:
                await self._store.delete_account(account_id, purge=False)
            self._store.set_retention(new.retention.days())
            if self._also is not None:
                await self._also(new)
            # The settings (and the workers) first, so new accounts find their workers.
            await self._supervisor.command(ApplyConfig(new))
            for record in plan.create:
                await self._supervisor.command(AddAccount(spec_of(record), "config"))
            for record in plan.change:
                await self._supervisor.command(ChangeAccount(spec_of(record)))
            for account_id in plan.remove:
                removed = asyncio.ensure_future(
                    self._supervisor.command(RemoveAccount(account_id))
                )  # let go in the background: its worker flushes first
                removed.add_done_callback(self._removed)
            result = UpdateResult(
                source=str(self._path) if self._path else "<embedded default>",
                settings=[SettingChange(**asdict(change)) for change in settings],
                accounts=AccountChanges(
                    added=[r.id for r in plan.create],
                    changed=[r.id for r in plan.change],
                    removed=plan.remove,
                    conflicts=plan.conflicts,
                ),
                restart_needed=restart_needed,
            )
            self._log.info(
                "configuration updated",
                settings={c.key: c.applies for c in settings},
                accounts=result.accounts.model_dump(),
                restart_needed=result.restart_needed,
            )
            for account_id in plan.conflicts:
                self._log.error(
                    "account declared in the config file was made through the API; the API's "
                    "is kept and the declaration left out",
                    account_id=account_id,
                )
            return result
