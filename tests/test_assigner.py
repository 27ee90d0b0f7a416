"""Account placement as pure decisions: sticky homes, moves after a delay, handshakes."""

from hiscrm.master.data.assigner import Assign, Assigner, Revoke
from hiscrm.models import AccountSpec

WORKERS = ["worker1", "worker2"]


def accounts(n: int) -> list[AccountSpec]:
    return [AccountSpec(id=f"a{i}") for i in range(1, n + 1)]


def assigned(actions: list[object]) -> list[tuple[str, str]]:
    return [(a.worker_id, a.account.id) for a in actions if isinstance(a, Assign)]


def owners(assigner: Assigner) -> dict[str, str | None]:
    return {a: s.owner for a, s in assigner.slots.items()}


def test_each_worker_gets_its_home_accounts_and_nothing_else_at_start() -> None:
    assigner = Assigner(accounts(4), WORKERS, per_worker=10, reassign_after_s=30, now=0)
    assert assigned(assigner.worker_up("worker1", 0.1)) == [("worker1", "a1"), ("worker1", "a3")]
    assert owners(assigner)["a2"] is None  # waits for worker2, no churn
    assert assigner.next_deadline() == 30
    assert assigned(assigner.worker_up("worker2", 0.2)) == [("worker2", "a2"), ("worker2", "a4")]
    assert assigner.next_deadline() is None


def test_a_quick_restart_keeps_the_accounts_where_they_are() -> None:
    assigner = Assigner(accounts(4), WORKERS, per_worker=10, reassign_after_s=30, now=0)
    assigner.worker_up("worker1", 0)
    assigner.worker_up("worker2", 0)
    assert assigner.worker_down("worker1", 5) == []
    assert assigner.tick(20) == []
    assert assigned(assigner.worker_up("worker1", 21)) == [("worker1", "a1"), ("worker1", "a3")]


def test_accounts_of_a_worker_down_too_long_move_and_come_back_by_handshake() -> None:
    assigner = Assigner(accounts(4), WORKERS, per_worker=10, reassign_after_s=30, now=0)
    assigner.worker_up("worker1", 0)
    assigner.worker_up("worker2", 0)
    assigner.worker_down("worker2", 10)
    assert assigner.next_deadline() == 40
    assert assigned(assigner.tick(39)) == []
    assert assigned(assigner.tick(40)) == [("worker1", "a2"), ("worker1", "a4")]

    actions = assigner.worker_up("worker2", 50)
    assert actions == [Revoke("worker1", "a2"), Revoke("worker1", "a4")]
    # Until worker1 lets go, nobody else has a2.
    assert owners(assigner)["a2"] == "worker1"
    assert assigned(assigner.released("worker1", "a2", 51)) == [("worker2", "a2")]
    assert assigner.released("worker1", "a2", 51) == []  # a duplicate changes nothing
    # worker1 dies before releasing a4: its death is the release.
    assert assigned(assigner.worker_down("worker1", 52)) == [("worker2", "a4")]
    assert owners(assigner) == {"a1": "worker1", "a2": "worker2", "a3": "worker1", "a4": "worker2"}


def test_a_moved_account_whose_temporary_owner_died_goes_straight_home() -> None:
    assigner = Assigner(accounts(2), WORKERS, per_worker=10, reassign_after_s=30, now=0)
    assigner.worker_up("worker1", 0)
    assigner.worker_up("worker2", 0)
    assigner.worker_down("worker2", 0)
    assigner.tick(30)  # a2 -> worker1
    assigner.worker_down("worker1", 31)
    assert assigned(assigner.worker_up("worker2", 32)) == [("worker2", "a2")]


def test_capacity_is_respected_and_overflow_waits_unplaced() -> None:
    assigner = Assigner(accounts(5), WORKERS, per_worker=2, reassign_after_s=30, now=0)
    assert assigned(assigner.worker_up("worker1", 0)) == [("worker1", "a1"), ("worker1", "a3")]
    assert assigned(assigner.worker_up("worker2", 0)) == [("worker2", "a2"), ("worker2", "a4")]
    assert assigner.unplaced == ["a5"]
    assert assigner.loads()["worker1"] == 2
    assert assigner.loads()["worker2"] == 2


def test_moves_go_to_the_least_loaded_worker() -> None:
    workers = ["worker1", "worker2", "worker3"]
    assigner = Assigner(accounts(6), workers, per_worker=3, reassign_after_s=1, now=0)
    for w in workers:
        assigner.worker_up(w, 0)
    assigner.worker_down("worker3", 0)
    moved = assigned(assigner.tick(1))
    assert sorted(w for w, _ in moved) == ["worker1", "worker2"]
    assert assigner.loads()["worker1"] == 3
    assert assigner.loads()["worker2"] == 3
