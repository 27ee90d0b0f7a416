"""``GET /cluster`` (the view is built in ``cluster_info``)."""

from collections.abc import Callable

from fastapi import APIRouter, Depends

from hiscrm.master.api.cluster_info import ClusterInfo
from hiscrm.master.api.params import only


def cluster_routes(router: APIRouter, cluster: Callable[[], ClusterInfo]) -> None:
    """``cluster()``: this master's view of the cluster now (the read model's)."""

    @router.get("/cluster", dependencies=[Depends(only())])
    async def get_cluster() -> ClusterInfo:
        return cluster()
