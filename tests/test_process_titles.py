"""Process titles name each process's role: ``hiscrm: master``, ``hiscrm: template``,
``hiscrm: spare``, ``hiscrm: worker1 [acc-1 acc-3]``; a worker's title follows its
accounts as they are added, move and go."""

from typing import Any

import psutil
import pytest
from conftest import MasterFactory, make_config
from harness import MARKER, Master, wait_until

from hiscrm.process_title import worker_title


def title(pid: int) -> str:
    """What ps shows (psutil splits a rewritten command line at its NULs)."""
    return " ".join(part for part in psutil.Process(pid).cmdline() if part)


def test_a_worker_title_lists_its_accounts_sorted() -> None:
    assert worker_title("worker1", ["acc-3", "acc-1"], 200) == "hiscrm: worker1 [acc-1 acc-3]"
    assert worker_title("worker2", [], 200) == "hiscrm: worker2 []"


def test_a_worker_title_shortens_the_accounts_to_fit_its_room() -> None:
    accounts = [f"acc-{n:02}" for n in range(1, 11)]
    for room in range(18, 90):
        shown = worker_title("worker1", accounts, room)
        assert len(shown) <= max(room, len("hiscrm: worker1 [+10]")), (room, shown)
        names = shown.removeprefix("hiscrm: worker1 [").removesuffix("]").split()
        if names and names[-1].startswith("+"):  # the rest counted
            assert len(names) - 1 + int(names[-1]) == 10, shown
            assert names[:-1] == accounts[: len(names) - 1]
        else:
            assert names == accounts, shown
    assert worker_title("worker1", accounts, 21) == "hiscrm: worker1 [+10]"
    assert worker_title("worker1", accounts, 34) == "hiscrm: worker1 [acc-01 acc-02 +8]"
    assert worker_title("worker1", accounts, 33) == "hiscrm: worker1 [acc-01 +9]"


def workers(master: Master) -> dict[str, dict[str, Any]]:
    with master.http() as http:
        return {w["id"]: w for w in http.get("/workers").json()["items"]}


def titles_follow_accounts(master: Master) -> bool:
    """Every running worker's title names the accounts the master says it has."""
    for worker in workers(master).values():
        if worker["state"] != "running":
            continue
        if title(worker["pid"]) != worker_title(worker["id"], worker["accounts"], 1000):
            return False
    return True


def wait_for_titles(master: Master, what: str) -> None:
    try:
        wait_until(lambda: titles_follow_accounts(master), 10, what)
    except AssertionError:
        shown = {w["id"]: (w["accounts"], title(w["pid"])) for w in workers(master).values()}
        raise AssertionError(f"{what}: {shown}") from None


@pytest.mark.timeout(90)
def test_titles_name_master_template_spare_and_workers_with_their_accounts(
    start_master: MasterFactory,
) -> None:
    config = make_config(workers=2, supervision={"reassign_after_s": 0.3})
    master = start_master(config)
    pids = master.wait_all_running(["worker1", "worker2"])
    assert title(master.pid) == "hiscrm: master"
    template = master.log.wait_for(event="fork template ready")["pid"]
    assert title(template) == "hiscrm: template"

    def spares() -> list[int]:
        children = psutil.Process(master.pid).children()
        return [c.pid for c in children if c.pid not in (template, *pids.values())]

    wait_until(lambda: any(title(p) == "hiscrm: spare" for p in spares()), 10, "a spare")
    wait_for_titles(master, "titles at start")
    assert all(len(w["accounts"]) == 2 for w in workers(master).values())
    # The environment stays readable beside a rewritten title (ps e, /proc/PID/environ).
    assert psutil.Process(pids["worker1"]).environ()[MARKER] == master.marker

    with master.http() as http:
        made = http.post("/accounts", json={"id": "acc-new", "platform": "demo"})
        assert made.status_code == 201, made.text
        wait_until(lambda: http.get("/accounts/acc-new").json()["worker"], 10, "acc-new placed")
        wait_for_titles(master, "an account added")
        placed = http.get("/accounts/acc-new").json()["worker"]
        assert "acc-new" in title(pids[placed])

        # A stopped worker's accounts move to the other one, whose title follows.
        other = "worker2" if placed == "worker1" else "worker1"
        assert http.post(f"/workers/{placed}/stop").json()["worker"]["state"] == "stopped"
        wait_until(lambda: len(workers(master)[other]["accounts"]) == 5, 10, "accounts moved")
        wait_for_titles(master, "accounts moved")
        assert title(pids[other]).count("acc-") == 5

        assert http.delete("/accounts/acc-new").status_code == 200
        wait_for_titles(master, "an account deleted")
        assert "acc-new" not in title(pids[other])
    assert master.stop() == 0
