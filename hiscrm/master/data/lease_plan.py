"""How many accounts a master of a cluster claims or hands back, as decisions without
I/O (the lease keeper carries them out against the store).

Every master (node) holds leases on at most its ``capacity`` accounts. The fair share of
a node is the enabled accounts split among the live nodes in proportion to their
capacities (never more than a node's capacity; what is left over from rounding goes to
the nodes with the most room, first by node id). A node below its share claims what is
free, a few at a time; a node above it hands a few back, but only while some other
live node is below its own share and there are no free accounts for that node to take
(handing back when nobody takes them would only churn). A node that is leaving has a
share of 0.
"""

import msgspec


class NodeView(msgspec.Struct, frozen=True):
    node_id: str
    capacity: int
    held: int
    alive: bool = True  # renewed within the lease time
    leaving: bool = False  # stopping gracefully: hands everything back


def fair_shares(enabled: int, nodes: list[NodeView]) -> dict[str, int]:
    """Each node's share of ``enabled`` accounts (0 for dead and leaving nodes)."""
    shares = {n.node_id: 0 for n in nodes}
    active = sorted((n for n in nodes if n.alive and not n.leaving), key=lambda n: n.node_id)
    total_capacity = sum(n.capacity for n in active)
    if not active or total_capacity == 0:
        return shares
    to_share = min(enabled, total_capacity)
    for node in active:
        shares[node.node_id] = min(node.capacity, to_share * node.capacity // total_capacity)
    left = to_share - sum(shares.values())
    while left > 0:
        room = [n for n in active if shares[n.node_id] < n.capacity]
        if not room:
            break
        # The most room first, then by id: every node computes the same split.
        room.sort(key=lambda n: (-(n.capacity - shares[n.node_id]), n.node_id))
        for node in room[:left]:
            shares[node.node_id] += 1
        left = to_share - sum(shares.values())
    return shares


class LeaseMoves(msgspec.Struct, frozen=True):
    claim: int  # free accounts to claim now
    release: int  # held accounts to hand back now


def plan(me: str, enabled: int, free: int, nodes: list[NodeView], step: int) -> LeaseMoves:
    """What node ``me`` does this round: claim up to ``step`` free accounts while below
    its share (and its capacity); hand back up to ``step`` while above its share, another
    node is below its own, and nothing is free for that node to take instead."""
    shares = fair_shares(enabled, nodes)
    mine = next(n for n in nodes if n.node_id == me)
    if mine.leaving or not mine.alive:
        return LeaseMoves(0, mine.held)
    share = shares[me]
    claim = max(0, min(step, share - mine.held, mine.capacity - mine.held, free))
    if claim == 0 and free > 0 and mine.held < mine.capacity:
        # Free accounts nobody else wants now (other nodes full or at their shares).
        wanting = sum(
            max(0, shares[n.node_id] - n.held)
            for n in nodes
            if n.node_id != me and n.alive and not n.leaving
        )
        claim = max(0, min(step, free - wanting, mine.capacity - mine.held))
    release = 0
    if mine.held > share and free == 0:
        short = sum(
            max(0, shares[n.node_id] - n.held)
            for n in nodes
            if n.node_id != me and n.alive and not n.leaving
        )
        release = min(step, mine.held - share, short)
    return LeaseMoves(claim, release)


def valid_until(renew_sent_at: float, ttl_s: float, margin_s: float) -> float:
    """Until when this node may act on a lease it renewed: the lease runs ``ttl_s`` from
    the store's clock, which read the renewal after it was sent; counting from the
    sending, less a margin, the node stops before any other node can take it."""
    return renew_sent_at + ttl_s - margin_s
