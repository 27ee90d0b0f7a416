"""``/accounts``: the accounts, their sync health, asking for a sync."""

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from hiscrm.master.api.control import Control
from hiscrm.master.api.params import MAX_INT, MAX_PAGE, AccountId, only
from hiscrm.master.api.read_model import ReadModel
from hiscrm.master.api.schemas import AccountInfo, ErrorBody, Page, SyncRequested, page_of


def account_routes(router: APIRouter, read: ReadModel, control: Control) -> None:
    @router.get("/accounts", dependencies=[Depends(only("limit", "offset"))])
    async def accounts(
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
        offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
    ) -> Page[AccountInfo]:
        return page_of(read.accounts(), limit, offset)

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
