"""What a master knows of its cluster (the nodes, the leases, its own renewals), as the
lease keeper last read it: plain values for the API and the metrics (no driver needed to
import them)."""

import msgspec


class NodeRow(msgspec.Struct, frozen=True):
    node_id: str
    capacity: int
    api_url: str | None
    pid: int | None
    lease_ttl_s: float
    started_at_ms: int
    renewed_at_ms: int
    renewed_age_s: float  # by the database's clock
    leaving: bool
    held: int  # leases it holds that have not expired

    @property
    def alive(self) -> bool:
        return self.renewed_age_s < self.lease_ttl_s


class LeaseRow(msgspec.Struct, frozen=True):
    account_id: str
    node_id: str | None  # None: free (never leased, let go, or its owner's lease expired)
    epoch: int
    expires_in_s: float  # negative: expired
    state: str | None  # as its owner last reported it
    state_at: int | None


class ClusterView(msgspec.Struct, frozen=True):
    nodes: list[NodeRow]
    enabled: int  # enabled accounts
    free: int  # enabled accounts nobody holds a live lease on
    db_now_ms: int


class LeaseStats(msgspec.Struct):
    """This node's lease keeping, for ``GET /cluster``, status and metrics."""

    node_id: str
    capacity: int
    lease_ttl_s: float
    lease_renew_s: float
    held: int = 0
    renewals: int = 0
    renewal_failures: int = 0
    claimed: int = 0
    handed_back: int = 0
    lost: int = 0  # leases found gone, refused by the fence, or dropped when cut off
    last_renewal_at: int | None = None  # ms, this master's clock
    last_error: str | None = None
    failing_since: int | None = None  # ms: the first failed round since the last success
    stopped_cut_off: int = 0  # accounts stopped since then, before their leases expired
    view: ClusterView | None = None
    leases: dict[str, LeaseRow] = msgspec.field(default_factory=dict)
