"""The cluster's lease decisions, without a store: fair shares, claiming, handing back."""

import pytest

from hiscrm.master.data.lease_plan import LeaseMoves, NodeView, fair_shares, plan, valid_until

pytestmark = pytest.mark.timeout(5)


def nodes(*held: int, capacity: int = 100) -> list[NodeView]:
    return [NodeView(f"n{i}", capacity, h) for i, h in enumerate(held, 1)]


def test_shares_split_by_capacity_and_add_up() -> None:
    assert fair_shares(30, nodes(0, 0, 0)) == {"n1": 10, "n2": 10, "n3": 10}
    assert fair_shares(31, nodes(0, 0, 0)) == {"n1": 11, "n2": 10, "n3": 10}
    uneven = [NodeView("a", 10, 0), NodeView("b", 30, 0)]
    assert fair_shares(20, uneven) == {"a": 5, "b": 15}
    # More accounts than capacity: every node full, the rest waits.
    assert fair_shares(100, uneven) == {"a": 10, "b": 30}
    # Dead and leaving nodes get nothing; the others share.
    mixed = [
        NodeView("a", 50, 5),
        NodeView("b", 50, 5, alive=False),
        NodeView("c", 50, 5, leaving=True),
    ]
    assert fair_shares(30, mixed) == {"a": 30, "b": 0, "c": 0}
    assert fair_shares(0, nodes(0, 0)) == {"n1": 0, "n2": 0}


def test_a_new_node_claims_free_accounts_a_few_at_a_time() -> None:
    assert plan("n1", 30, 30, nodes(0, 0, 0), step=4) == LeaseMoves(claim=4, release=0)
    # Up to its share, not beyond while others want theirs.
    assert plan("n1", 30, 2, nodes(10, 8, 10), step=4) == LeaseMoves(claim=0, release=0)
    assert plan("n2", 30, 2, nodes(10, 8, 10), step=4) == LeaseMoves(claim=2, release=0)
    # Never beyond capacity.
    assert plan("n1", 30, 30, nodes(3, capacity=5), step=10) == LeaseMoves(claim=2, release=0)


def test_a_lone_node_takes_what_others_cannot() -> None:
    # n2 is full (capacity 5), so n1 takes more than an even split.
    full = [NodeView("n1", 100, 20), NodeView("n2", 5, 5)]
    assert plan("n1", 40, 15, full, step=10).claim == 10


def test_an_overloaded_node_hands_back_only_to_a_node_that_wants_them() -> None:
    # A node joins: n1 holds all 30, the newcomer none, nothing is free.
    joined = [NodeView("n1", 100, 30), NodeView("n2", 100, 0)]
    assert plan("n1", 30, 0, joined, step=3) == LeaseMoves(claim=0, release=3)
    assert plan("n2", 30, 0, joined, step=3) == LeaseMoves(claim=0, release=0)
    # Free accounts exist: the newcomer takes those; nobody hands back meanwhile.
    assert plan("n1", 30, 4, joined, step=3).release == 0
    # Balanced: nothing moves.
    assert plan("n1", 30, 0, nodes(15, 15), step=3) == LeaseMoves(0, 0)
    # Off by one is balanced too (31 over 2).
    assert plan("n1", 31, 0, nodes(16, 15), step=3) == LeaseMoves(0, 0)


def test_a_leaving_node_hands_everything_back() -> None:
    leaving = [NodeView("n1", 100, 12, leaving=True), NodeView("n2", 100, 12)]
    assert plan("n1", 24, 0, leaving, step=3) == LeaseMoves(claim=0, release=12)


def test_a_node_stops_acting_before_its_lease_can_be_taken() -> None:
    assert valid_until(100.0, ttl_s=10.0, margin_s=1.0) == 109.0
