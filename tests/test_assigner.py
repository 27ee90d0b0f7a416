"""Account placement as pure decisions: sticky homes, moves after a delay, handshakes."""

from collections import Counter

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


def homes_of(assigner: Assigner) -> dict[str, str | None]:
    return {a: s.planned_home for a, s in assigner.slots.items()}


def test_raising_workers_moves_about_a_third_and_lowering_only_the_removed_ones() -> None:
    assigner = Assigner(accounts(30), WORKERS, per_worker=100, reassign_after_s=30, now=0)
    assigner.worker_up("worker1", 0)
    assigner.worker_up("worker2", 0)
    before = homes_of(assigner)
    actions = assigner.set_workers(["worker1", "worker2", "worker3"], 1)
    after = homes_of(assigner)
    moved = [a for a in before if before[a] != after[a]]
    assert len(moved) == 10  # 15/15 -> 10/10/10
    assert {after[a] for a in moved} == {"worker3"}
    assert sorted(Counter(after.values()).values()) == [10, 10, 10]
    # worker3 does not run yet: the moved accounts are revoked once it does.
    assert actions == []
    revokes = assigner.worker_up("worker3", 2)
    assert sorted(a.account_id for a in revokes if isinstance(a, Revoke)) == sorted(moved)

    before = homes_of(assigner)
    assigner.set_workers(["worker1"], 3)
    after = homes_of(assigner)
    moved = {a for a in before if before[a] != after[a]}
    assert moved == {a for a in before if before[a] in ("worker2", "worker3")}
    assert set(after.values()) == {"worker1"}


def test_added_accounts_go_where_there_is_room_and_stay() -> None:
    assigner = Assigner(accounts(3), WORKERS, per_worker=2, reassign_after_s=30, now=0)
    assigner.worker_up("worker1", 0)
    assigner.worker_up("worker2", 0)
    assert assigned(assigner.add(AccountSpec(id="new"), 1)) == [("worker2", "new")]
    assert assigner.add(AccountSpec(id="full"), 1) == []  # 2 + 2: no room
    assert assigner.slots["full"].home is None
    assert homes_of(assigner) == {
        "a1": "worker1",
        "a2": "worker2",
        "a3": "worker1",
        "new": "worker2",
        "full": None,
    }


def test_removing_an_account_waits_for_its_worker_to_let_go() -> None:
    assigner = Assigner(accounts(2), WORKERS, per_worker=10, reassign_after_s=30, now=0)
    assigner.worker_up("worker1", 0)
    assert assigner.remove("a1", 1) == [Revoke("worker1", "a1")]
    assert not assigner.gone("a1")
    assert assigner.released("worker1", "a1", 2) == []
    assert assigner.gone("a1")
    assert assigner.remove("a2", 3) == []  # its worker is not running: gone at once
    assert assigner.gone("a2")


def test_an_account_removed_while_its_worker_dies_is_let_go_by_the_death() -> None:
    """Deleted while its worker was hung (the revoke unanswered), then the worker died:
    the death is the release, and the account is forgotten (once a RuntimeError,
    "dictionary changed size during iteration", that left the delete unanswered)."""
    assigner = Assigner(accounts(3), WORKERS, per_worker=10, reassign_after_s=30, now=0)
    assigner.worker_up("worker1", 0)
    assert assigner.remove("a1", 1) == [Revoke("worker1", "a1")]
    assert assigner.remove("a3", 1) == [Revoke("worker1", "a3")]
    assert assigner.worker_down("worker1", 2) == []
    assert assigner.gone("a1")
    assert assigner.gone("a3")
    assert list(assigner.slots) == ["a2"]


def test_changed_options_restart_the_task_and_disabled_accounts_are_not_placed() -> None:
    assigner = Assigner(accounts(2), WORKERS, per_worker=10, reassign_after_s=30, now=0)
    assigner.worker_up("worker1", 0)
    changed = AccountSpec(id="a1", options={"rate": 9})
    assert assigner.change(changed, 1) == [Revoke("worker1", "a1")]
    assert assigned(assigner.released("worker1", "a1", 2)) == [("worker1", "a1")]
    assert assigner.slots["a1"].account.options == {"rate": 9}

    disabled = AccountSpec(id="a1", enabled=False)
    assert assigner.change(disabled, 3) == [Revoke("worker1", "a1")]
    assert assigner.released("worker1", "a1", 4) == []
    assert assigner.slots["a1"].owner is None
    assert assigner.worker_up("worker2", 5) == [Assign("worker2", assigner.slots["a2"].account)]
    assert assigned(assigner.change(AccountSpec(id="a1"), 6)) == [("worker1", "a1")]


def test_an_account_without_room_says_why_and_gets_a_home_when_room_appears() -> None:
    assigner = Assigner(accounts(3), ["worker1"], per_worker=2, reassign_after_s=30, now=0)
    assigner.worker_up("worker1", 0)
    assert assigner.slots["a3"].home is None
    assert assigner.no_room() == "no capacity: 1 worker x 2 accounts_per_worker = 2, all taken"

    # More workers: the homeless account's home is the new one, not an account moved.
    assert assigner.set_workers(["worker1", "worker2"], 1) == []  # worker2 does not run yet
    assert homes_of(assigner) == {"a1": "worker1", "a2": "worker1", "a3": "worker2"}
    assert assigned(assigner.worker_up("worker2", 2)) == [("worker2", "a3")]
    assert assigner.add(AccountSpec(id="a4"), 3) == [Assign("worker2", AccountSpec(id="a4"))]
    assert assigner.add(AccountSpec(id="a5"), 3) == []
    assert assigner.no_room() == "no capacity: 2 workers x 2 accounts_per_worker = 4, all taken"

    # An account removed, or disabled: the first homeless one takes its place.
    assert assigner.remove("a1", 4) == [Revoke("worker1", "a1"), Assign("worker1", AccountSpec(id="a5"))]  # fmt: skip
    assert assigner.add(AccountSpec(id="a6"), 5) == []
    assert assigner.change(AccountSpec(id="a2", enabled=False), 6) == [
        Revoke("worker1", "a2"),
        Assign("worker1", AccountSpec(id="a6")),
    ]
    assert homes_of(assigner)["a6"] == "worker1"

    # Fewer workers: the removed worker's accounts have no home again, and leave it (so
    # it can stop; once they stayed on it for good).
    assert assigner.set_workers(["worker1"], 7) == [Revoke("worker2", "a3"), Revoke("worker2", "a4")]  # fmt: skip
    assert assigner.released("worker2", "a3", 8) == []
    assert assigner.released("worker2", "a4", 8) == []
    assert assigner.accounts_of("worker2") == []
    assert assigner.slots["a3"].home is None
    assert assigner.no_room() == "no capacity: 1 worker x 2 accounts_per_worker = 2, all taken"
