"""``/accounts``: the accounts, their sync health, asking for a sync."""

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from hiscrm.master.api.account_admin import (
    AccountAdmin,
    AccountCreate,
    AccountDeleted,
    AccountPatch,
)
from hiscrm.master.api.config_update import ConfigUpdater, UpdateResult
from hiscrm.master.api.control import Control
from hiscrm.master.api.params import MAX_INT, MAX_PAGE, AccountId, only
from hiscrm.master.api.read_model import ReadModel
from hiscrm.master.api.schemas import AccountInfo, ErrorBody, Page, SyncRequested, page_of


def account_routes(
    router: APIRouter,
    read: ReadModel,
    control: Control,
    admin: AccountAdmin,
    updater: ConfigUpdater,
) -> None:
    @router.get("/accounts", dependencies=[Depends(only("limit", "offset"))])
    async def accounts(
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
        offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
    ) -> Page[AccountInfo]:
        return page_of(read.accounts(), limit, offset)

    @router.post(
        "/accounts",
        status_code=201,
        dependencies=[Depends(only())],
        responses={409: {"model": ErrorBody}},
    )
    async def create(body: AccountCreate) -> AccountInfo:
        """A new account (``source`` api): placed on a worker at once if there is room."""
        return await admin.create(body)

    @router.patch(
        "/accounts/{account_id}",
        dependencies=[Depends(only())],
        responses={409: {"model": ErrorBody}},
    )
    async def change(account_id: AccountId, patch: AccountPatch) -> AccountInfo:
        """New options (its task restarts with them) or enabled; others untouched."""
        return await admin.change(account_id, patch)

    @router.delete(
        "/accounts/{account_id}",
        dependencies=[Depends(only("purge"))],
        responses={409: {"model": ErrorBody}},
    )
    async def delete(account_id: AccountId, purge: bool = False) -> AccountDeleted:
        """Stopped and out of the registry; its data is kept unless ``purge``."""
        return await admin.delete(account_id, purge)

    @router.post("/config/update", dependencies=[Depends(only())])
    async def update() -> UpdateResult:
        """Read the config file again and apply it (a bad file changes nothing: 422)."""
        return await updater.update()

    @router.get("/accounts/{account_id}", dependencies=[Depends(only())])
    async def account(account_id: AccountId) -> AccountInfo:
        return await read.account_with_counts(account_id)

    @router.post(
        "/accounts/{account_id}/release",
        dependencies=[Depends(only())],
        responses={409: {"model": ErrorBody}},
    )
    async def release(account_id: AccountId) -> AccountInfo:
        """Lift the account's quarantine: it goes back to normal placement."""
        return await control.release(account_id)

    @router.post(
        "/accounts/{account_id}/sync",
        status_code=202,
        dependencies=[Depends(only("from_seq"))],
        responses={409: {"model": ErrorBody}},
    )
    async def sync(
        account_id: AccountId, from_seq: Annotated[int | None, Query(ge=0, le=MAX_INT)] = None
    ) -> SyncRequested:
        return await control.request_sync(account_id, from_seq)
