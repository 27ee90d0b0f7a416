"""``GET /cluster``: the masters sharing the store (a cluster on PostgreSQL), their
capacity, the leases each holds, when each last renewed, and which lag or are lost; and
this master's own lease keeping. On SQLite the master is a cluster of one that owns
every account."""

import os
from typing import Literal

from pydantic import BaseModel

from hiscrm.master.data.lease_view import LeaseStats, NodeRow

NodeState = Literal["ok", "lagging", "lost", "leaving"]


class NodeInfo(BaseModel):
    node_id: str
    me: bool  # this master
    state: NodeState  # lagging: not renewed for half the lease time; lost: for all of it
    capacity: int
    leases: int  # live leases it holds
    api_url: str | None
    pid: int | None
    started_at: int  # ms (the database's clock)
    renewed_at: int  # ms (the database's clock)
    renewed_age_s: float
    lease_ttl_s: float


class ClusterInfo(BaseModel):
    node_id: str  # this master
    clustered: bool  # False: SQLite, one master owns every account
    lease_ttl_s: float
    lease_renew_s: float
    enabled: int  # enabled accounts in the store
    free: int  # enabled accounts no node holds a live lease on
    nodes: list[NodeInfo]
    held: int  # leases this master holds
    renewals: int
    renewal_failures: int
    last_renewal_at: int | None  # ms (this master's clock)
    last_error: str | None  # of the last failed renewal, while it fails
    claimed: int
    handed_back: int
    lost: int  # leases lost: taken while cut off, refused by the fence, or not renewed


def node_state(node: NodeRow) -> NodeState:
    if node.leaving:
        return "leaving"
    if not node.alive:
        return "lost"
    return "lagging" if node.renewed_age_s > node.lease_ttl_s / 2 else "ok"


def cluster_info(stats: LeaseStats) -> ClusterInfo:
    view = stats.view
    nodes = [
        NodeInfo(
            node_id=n.node_id,
            me=n.node_id == stats.node_id,
            state=node_state(n),
            capacity=n.capacity,
            leases=n.held,
            api_url=n.api_url,
            pid=n.pid,
            started_at=n.started_at_ms,
            renewed_at=n.renewed_at_ms,
            renewed_age_s=round(n.renewed_age_s, 3),
            lease_ttl_s=n.lease_ttl_s,
        )
        for n in (view.nodes if view is not None else [])
    ]
    return ClusterInfo(
        node_id=stats.node_id,
        clustered=True,
        lease_ttl_s=stats.lease_ttl_s,
        lease_renew_s=stats.lease_renew_s,
        enabled=view.enabled if view is not None else 0,
        free=view.free if view is not None else 0,
        nodes=nodes,
        held=stats.held,
        renewals=stats.renewals,
        renewal_failures=stats.renewal_failures,
        last_renewal_at=stats.last_renewal_at,
        last_error=stats.last_error,
        claimed=stats.claimed,
        handed_back=stats.handed_back,
        lost=stats.lost,
    )


def one_host(
    node_id: str, capacity: int, enabled: int, started_at: int, now_ms: int, api_url: str | None
) -> ClusterInfo:
    """SQLite: this master alone, owning every enabled account."""
    me = NodeInfo(
        node_id=node_id,
        me=True,
        state="ok",
        capacity=capacity,
        leases=enabled,
        api_url=api_url,
        pid=os.getpid(),
        started_at=started_at,
        renewed_at=now_ms,
        renewed_age_s=0.0,
        lease_ttl_s=0.0,
    )
    return ClusterInfo(
        node_id=node_id,
        clustered=False,
        lease_ttl_s=0.0,
        lease_renew_s=0.0,
        enabled=enabled,
        free=0,
        nodes=[me],
        held=enabled,
        renewals=0,
        renewal_failures=0,
        last_renewal_at=None,
        last_error=None,
        claimed=0,
        handed_back=0,
        lost=0,
    )
