"""``/master/logs``: the master's own log (also followed); ``/shutdown``: stop the master
and every worker, as SIGTERM does."""

import asyncio
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from hiscrm.logfile import tail_lines
from hiscrm.master.api.control import Control
from hiscrm.master.api.errors import ApiError
from hiscrm.master.api.log_follow import FollowResponse, LogFollowers, TooManyFollowers
from hiscrm.master.api.params import MAX_TAIL, only
from hiscrm.master.api.schemas import ErrorBody, ShutdownStarted


class MasterLogLines(BaseModel):
    path: str
    lines: list[str]


def master_routes(
    router: APIRouter, control: Control, followers: LogFollowers, log_path: Path
) -> None:
    @router.get(
        "/master/logs",
        dependencies=[Depends(only("tail", "follow"))],
        response_model=MasterLogLines,
        responses={200: {"content": {"text/plain": {}}}, 503: {"model": ErrorBody}},
    )
    async def master_logs(
        tail: Annotated[int, Query(ge=0, le=MAX_TAIL)] = 100,
        follow_: Annotated[bool, Query(alias="follow")] = False,
    ) -> Any:
        lines = await asyncio.to_thread(tail_lines, log_path, tail)
        if not follow_:
            return MasterLogLines(path=str(log_path), lines=lines)
        try:
            follower = followers.open(log_path)
        except TooManyFollowers as exc:
            raise ApiError(503, str(exc)) from None
        return FollowResponse(follower, lines)

    @router.post("/shutdown", dependencies=[Depends(only())], responses={409: {"model": ErrorBody}})
    async def shutdown() -> ShutdownStarted:
        return await control.shutdown()
