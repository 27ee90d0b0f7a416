"""The quarantine rule as a pure function of worker deaths and time."""

from hiscrm.master.data.quarantine import Quarantine, QuarantineRule

RULE = QuarantineRule(window_s=60, deaths=3, slots=2, release_after_s=30)


def test_deaths_on_two_worker_slots_quarantine_the_account_that_was_on_both() -> None:
    q = Quarantine(RULE)
    assert q.death(["poison", "a"], "worker1", 0.0) == []
    assert q.suspected("poison", 1.0)
    assert q.suspected("a", 1.0)
    assert not q.suspected("b", 1.0)
    # Moved to worker2, beside b: it dies there too.
    assert q.death(["poison", "b"], "worker2", 10.0) == ["poison"]
    assert q.quarantined == {"poison"}
    assert not q.is_quarantined("a")
    assert not q.is_quarantined("b")


def test_a_crash_loop_quarantines_every_account_of_the_worker_each_alone() -> None:
    q = Quarantine(RULE)
    assert q.death(["poison", "a"], "worker1", 0.0) == []
    assert q.death(["poison", "a"], "worker1", 1.0) == []
    assert sorted(q.death(["poison", "a"], "worker1", 2.0)) == ["a", "poison"]
    # Alone, a runs without trouble and is released; poison keeps dying and is not.
    q.running_alone("a", 5.0)
    q.running_alone("poison", 5.0)
    assert q.death(["poison"], "solo-poison", 6.0) == []  # already quarantined
    assert q.next_deadline() == 35.0
    assert q.due_for_release(34.9) == []
    assert q.due_for_release(35.0) == ["a"]
    assert q.quarantined == {"poison"}
    assert not q.suspected("a", 35.0)  # released with its evidence forgotten


def test_evidence_older_than_the_window_is_forgotten() -> None:
    q = Quarantine(RULE)
    q.death(["a"], "worker1", 0.0)
    q.death(["a"], "worker1", 30.0)
    assert q.deaths("a", 30.0) == 2
    assert q.death(["a"], "worker1", 70.0) == []  # the first is out of the window
    assert q.deaths("a", 70.0) == 2
    assert not q.suspected("a", 200.0)


def test_a_death_alone_restarts_the_release_clock() -> None:
    q = Quarantine(RULE)
    q.death(["p"], "worker1", 0.0)
    q.death(["p"], "worker2", 1.0)
    q.running_alone("p", 2.0)
    q.death(["p"], "solo-p", 20.0)
    assert q.next_deadline() is None  # not running alone right now
    q.running_alone("p", 25.0)
    assert q.due_for_release(50.0) == []
    assert q.due_for_release(55.0) == ["p"]


def test_an_operator_releases_and_a_stop_alone_restarts_the_clock() -> None:
    q = Quarantine(RULE)
    q.death(["p"], "worker1", 0.0)
    q.death(["p"], "worker2", 1.0)
    q.running_alone("p", 2.0)
    q.stopped_alone("p")
    assert q.next_deadline() is None
    assert q.release("p")
    assert not q.release("p")
    assert q.quarantined == set()
