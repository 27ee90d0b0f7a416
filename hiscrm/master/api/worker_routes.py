"""``/workers``: the workers, acting on them, their logs; ``/reload``."""

import asyncio
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from hiscrm.master.api.control import WORKER_COMMANDS, Control
from hiscrm.master.api.errors import ApiError
from hiscrm.master.api.log_follow import FollowResponse, LogFollowers, TooManyFollowers
from hiscrm.master.api.params import MAX_INT, MAX_PAGE, MAX_TAIL, WorkerId, only
from hiscrm.master.api.read_model import ReadModel
from hiscrm.master.api.schemas import (
    ErrorBody,
    Page,
    ReloadResult,
    WorkerAction,
    WorkerInfo,
    page_of,
)


class LogLines(BaseModel):
    worker: str
    path: str
    lines: list[str]


def worker_routes(
    router: APIRouter, read: ReadModel, control: Control, followers: LogFollowers
) -> None:
    @router.get("/workers", dependencies=[Depends(only("limit", "offset"))])
    async def workers(
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
        offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
    ) -> Page[WorkerInfo]:
        return page_of(read.workers(), limit, offset)

    @router.get("/workers/{worker_id}", dependencies=[Depends(only())])
    async def worker(worker_id: WorkerId) -> WorkerInfo:
        return read.worker(worker_id)

    for action in WORKER_COMMANDS:

        async def action_route(worker_id: WorkerId, action: str = action) -> WorkerAction:
            try:
                return await control.act(worker_id, action)
            except TimeoutError:
                raise ApiError(
                    504,
                    f"{action} of {worker_id} did not settle in time",
                    read.worker(worker_id).model_dump(),
                ) from None

        router.add_api_route(
            f"/workers/{{worker_id}}/{action}",
            action_route,
            methods=["POST"],
            response_model=WorkerAction,
            name=f"{action}_worker",
            dependencies=[Depends(only())],
            responses={409: {"model": ErrorBody}, 504: {"model": ErrorBody}},
        )

    @router.get(
        "/workers/{worker_id}/logs",
        dependencies=[Depends(only("tail", "follow"))],
        response_model=LogLines,
        responses={200: {"content": {"text/plain": {}}}, 503: {"model": ErrorBody}},
    )
    async def worker_logs(
        worker_id: WorkerId,
        tail: Annotated[int, Query(ge=0, le=MAX_TAIL)] = 100,
        follow_: Annotated[bool, Query(alias="follow")] = False,
    ) -> Any:
        if not follow_:
            path, lines = await read.worker_log(worker_id, tail)
            return LogLines(worker=worker_id, path=path, lines=lines)
        path, _ = await read.worker_log(worker_id, 0)
        try:
            follower = followers.open(Path(path))
        except TooManyFollowers as exc:
            raise ApiError(503, str(exc)) from None
        # The tail ends where the follower goes on from: nothing written meanwhile is lost.
        try:
            lines = await asyncio.to_thread(follower.tail, tail)
        except BaseException:
            follower.close()
            raise
        return FollowResponse(follower, lines)

    @router.post(
        "/reload",
        dependencies=[Depends(only())],
        responses={409: {"model": ErrorBody}, 504: {"model": ErrorBody}},
    )
    async def reload() -> ReloadResult:
        try:
            return await control.reload()
        except TimeoutError:
            raise ApiError(504, "the rolling restart did not finish in time") from None
