"""Making, changing and deleting accounts while the master runs (``POST``/``PATCH``/
``DELETE /accounts``, ``hiscrmctl account …``).

The store's registry is written first, then the running master follows by a command to
the supervisor: nothing is half-made (a bad request is refused before either). Accounts
declared in the config file belong to the file: the API refuses to change or delete them
(change the file, then ``hiscrmctl update``); see ``data/account_registry``.
"""

import asyncio
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from structlog.typing import FilteringBoundLogger

from hiscrm.items import epoch_ms
from hiscrm.master.api.errors import ApiError, echo
from hiscrm.master.api.read_model import NotFound, ReadModel
from hiscrm.master.api.schemas import AccountInfo
from hiscrm.master.data.account_registry import record_of, spec_of
from hiscrm.master.data.store import AccountRecord, Store
from hiscrm.master.supervision.commands import AddAccount, ChangeAccount, RemoveAccount
from hiscrm.master.supervision.platform_check import find_module
from hiscrm.master.supervision.supervisor import Supervisor
from hiscrm.models import (
    ACCOUNT_ID_PATTERN,
    AccountOptions,
    AccountSpec,
    MemoryLimitMb,
    validation_problem,
)
from hiscrm.platform_names import resolve_platform_name

REMOVE_TIMEOUT_S = 60.0  # for its worker to let a deleted account go
MAX_MEMORY_MB_DESCRIPTION = (
    "the memory limit (MB, 16 to 1048576) of its own worker while it is quarantined and "
    "runs alone; null: [supervision] max_memory_mb"
)


class AccountCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(
        pattern=ACCOUNT_ID_PATTERN,
        description="letters, digits, '.', '_', '-'; up to 64; safe as a file name",
    )
    platform: str = "demo"
    options: AccountOptions = Field(default_factory=dict)
    enabled: bool = True
    max_memory_mb: MemoryLimitMb | None = Field(default=None, description=MAX_MEMORY_MB_DESCRIPTION)


class AccountPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    options: AccountOptions | None = None  # replaces the options whole
    enabled: bool | None = None
    max_memory_mb: MemoryLimitMb | None = Field(
        default=None, description=MAX_MEMORY_MB_DESCRIPTION + "; null clears it, absent keeps it"
    )


class AccountDeleted(BaseModel):
    id: str
    purged: bool
    deleted: dict[str, int]  # items removed per collection (purge only)


class AccountAdmin:
    def __init__(
        self,
        supervisor: Supervisor,
        read: ReadModel,
        store: Store,
        spool_dir: Path,
        plugin_paths: list[str],
        log: FilteringBoundLogger,
    ) -> None:
        self._supervisor = supervisor
        self._read = read
        self._store = store
        self._spool_dir = spool_dir
        self._plugin_paths = plugin_paths
        self._log = log
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def create(self, body: AccountCreate) -> AccountInfo:
        spec = self._valid_spec(
            body.id, body.platform, body.options, body.enabled, body.max_memory_mb
        )
        async with self._locks[spec.id]:
            if spec.id in self._read.account_ids():
                raise ApiError(409, f"account {spec.id!r} exists")
            now = epoch_ms()
            await self._store.put_account(record_of(spec, "api", now, now))
            await self._supervisor.command(AddAccount(spec, "api"))
            self._log.info("account created through the API", account_id=spec.id)
            return self._read.account(spec.id)

    async def change(self, account_id: str, patch: AccountPatch) -> AccountInfo:
        async with self._locks[account_id]:
            record = await self._api_owned(account_id)
            options = patch.options if patch.options is not None else record.options
            enabled = patch.enabled if patch.enabled is not None else record.enabled
            limit = record.max_memory_mb
            if "max_memory_mb" in patch.model_fields_set:  # given: null clears it
                limit = patch.max_memory_mb
            spec = self._valid_spec(account_id, record.platform, options, enabled, limit)
            if spec == spec_of(record):
                return self._read.account(account_id)  # nothing to do
            await self._store.put_account(record_of(spec, "api", record.created_at, epoch_ms()))
            await self._supervisor.command(ChangeAccount(spec))
            return self._read.account(account_id)

    async def delete(self, account_id: str, purge: bool) -> AccountDeleted:
        async with self._locks[account_id]:
            await self._api_owned(account_id)
            async with asyncio.timeout(REMOVE_TIMEOUT_S):
                await self._supervisor.command(RemoveAccount(account_id))
            deleted = await self._store.delete_account(account_id, purge)
            if purge:
                await asyncio.to_thread(shutil.rmtree, self._spool_dir / account_id, True)
            self._log.info(
                "account deleted",
                account_id=account_id,
                purged=purge,
                data="removed" if purge else "kept (an account of the same id goes on with it)",
                deleted=deleted,
            )
            return AccountDeleted(id=account_id, purged=purge, deleted=deleted)

    async def _api_owned(self, account_id: str) -> AccountRecord:
        records = {r.id: r for r in await self._store.accounts()}
        record = records.get(account_id)
        if record is None or account_id not in self._read.account_ids():
            raise NotFound(f"no account {account_id!r}")
        if record.source != "api":
            raise ApiError(
                409,
                f"account {account_id!r} is declared in the config file: change it there, "
                "then run hiscrmctl update",
            )
        return record

    def _valid_spec(
        self,
        account_id: str,
        platform: str,
        options: dict[str, Any],
        enabled: bool,
        max_memory_mb: int | None,
    ) -> AccountSpec:
        """The account as the master runs it, or a 422 naming what is wrong."""
        try:
            spec = AccountSpec(
                id=account_id,
                platform=platform,
                options=options,
                enabled=enabled,
                max_memory_mb=max_memory_mb,
            )
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            problem = validation_problem(error)
            raise ApiError(422, problem, {"input": echo(error.get("input"))}) from exc
        module = resolve_platform_name(spec.platform).partition(":")[0]
        if find_module(module, self._plugin_paths) is None:
            raise ApiError(
                422,
                f"platform: module {module!r} not found (on the master's sys.path or plugin_paths)",
            )
        return spec
