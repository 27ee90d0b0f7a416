"""What this master does for a command another master routed to it through the store
(``data/command_router``): the same as for its own API, on an account it holds. A
refusal (the account has no worker right now, a reply that cannot be cancelled) goes
back to the requester as the command's error."""

from typing import Any

from hiscrm.master.api.control import Control
from hiscrm.master.api.errors import ApiError
from hiscrm.master.api.read_model import NotFound
from hiscrm.master.api.replies import Replies
from hiscrm.master.data.routed import Executor, Refused
from hiscrm.master.supervision.commands import CommandRefused


def executors(control: Control, replies: Replies) -> dict[str, Executor]:
    async def sync(account_id: str, args: dict[str, Any]) -> dict[str, Any]:
        try:
            done = await control.sync_here(account_id, args.get("from_seq"))
        except CommandRefused as exc:
            raise Refused(str(exc)) from None
        return done.model_dump(exclude={"node"})

    async def release(account_id: str, args: dict[str, Any]) -> dict[str, Any]:
        try:
            account = await control.release_here(account_id)
        except (CommandRefused, NotFound) as exc:
            raise Refused(str(exc)) from None
        return account.model_dump(mode="json")

    async def cancel(account_id: str, args: dict[str, Any]) -> dict[str, Any]:
        try:
            entry = await replies.cancel_here(account_id, str(args["request_id"]))
        except (ApiError, NotFound) as exc:
            raise Refused(str(exc)) from None
        return entry.model_dump()

    async def retry(account_id: str, args: dict[str, Any]) -> dict[str, Any]:
        try:
            entry = await replies.retry_here(account_id, str(args["request_id"]))
        except (ApiError, NotFound) as exc:
            raise Refused(str(exc)) from None
        return entry.model_dump()

    return {
        "sync": sync,
        "account.release": release,
        "reply.cancel": cancel,
        "reply.retry": retry,
    }
