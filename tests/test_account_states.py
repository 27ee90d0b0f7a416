"""Every account state of the brief is reached on a real master and shown where an
operator looks: ``GET /accounts/{id}``, ``hiscrmctl accounts``, the metric
``hiscrm_account_state`` and one ``account state`` line in ``master.log``."""

import json
import os
import signal
from typing import Any

import httpx
import pytest
from conftest import MasterFactory, make_config
from harness import Master, metric, wait_until
from test_ctl import ctl

from hiscrm.master.data.account_status import AccountState

TOOK = "the state of every account"


def shown(master: Master, http: httpx.Client, account_id: str, state: str) -> None:
    """The account is in ``state`` in the API, the metric, the command and the log."""
    assert http.get(f"/accounts/{account_id}").json()["state"] == state
    sample = f'hiscrm_account_state{{account="{account_id}",state="{state}"}}'
    assert metric(http.get("/metrics").text, sample) == 1, sample
    master.log.wait_for(event="account state", account_id=account_id, new=state, timeout=5)


def in_listing(master: Master, expected: dict[str, str]) -> None:
    listing = ctl(master, "accounts")
    assert listing.returncode == 0, listing.stderr
    rows: dict[str, list[str]] = {}
    for line in listing.stdout.splitlines():  # an account's row is the first line it starts
        if line.strip():  # (a wrapped cell's next line may start with its id too)
            rows.setdefault(line.split()[0], line.split())
    for account_id, state in expected.items():
        assert state in rows[account_id], (account_id, state, listing.stdout)


def wait_until_event(master: Master, account_id: str, state: str) -> dict[str, Any]:
    """The account's first ``account.state`` event into ``state``, from ``hiscrmctl events``."""
    found: list[dict[str, Any]] = []

    def seen() -> bool:
        out = ctl(master, "--json", "events", "--type", "account.state", "--account", account_id)
        assert out.returncode == 0, out.stderr
        events = [json.loads(line)["data"] for line in out.stdout.splitlines()]
        found[:] = [e for e in events if e["state"] == state]
        return bool(found)

    wait_until(seen, 10, f"an account.state event of {account_id} into {state}")
    return found[0]


@pytest.mark.timeout(90)
def test_every_account_state_is_reached_and_shown(start_master: MasterFactory) -> None:
    reached: set[str] = set()

    # One master holds six states at once: 2 workers x 2 accounts, ids in placement order.
    accounts: list[dict[str, Any]] = [
        {"id": "a-run", "platform": "demo", "options": {"rate": 2.0}},
        {"id": "b-down", "platform": "demo", "options": {"rate": 2.0}},
        {
            "id": "c-backoff",  # raises at once; waits 3 s, then 6 s, ... in between
            "platform": "testplatforms.behaviours:RaiseSoon",
            "options": {"after_s": 0.0},
        },
        {"id": "d-failed", "platform": "testplatforms.no_such_module:Gone"},
        {"id": "e-extra", "platform": "demo"},  # beyond 2 x 2: no room
        {"id": "f-off", "platform": "demo", "enabled": False},
    ]
    config = make_config(
        workers=2,
        accounts=accounts,
        accounts_per_worker=2,
        supervision={"backoff_initial_s": 3.0, "backoff_max_s": 30.0, "reassign_after_s": 600},
    )
    master = start_master(config)
    master.wait_all_running(["worker1", "worker2"])
    with master.http() as http:

        def state(account_id: str) -> str:
            return str(http.get(f"/accounts/{account_id}").json()["state"])

        expected = {
            "a-run": "running",
            "c-backoff": "backoff",
            "d-failed": "failed",
            "e-extra": "unassigned",
            "f-off": "disabled",
        }
        wait_until(lambda: all(state(a) == s for a, s in expected.items()), 20, TOOK)
        for account_id, expected_state in expected.items():
            shown(master, http, account_id, expected_state)
        assert "Gone" in http.get("/accounts/d-failed").json()["reason"]
        assert http.get("/accounts/e-extra").json()["worker"] is None
        in_listing(master, expected)
        reached.update(expected.values())

        # The account.state event carries the end of the traceback behind a failed or
        # backoff state (bounded); the log line keeps to its last line.
        for account_id, into, where in (
            ("d-failed", "failed", "no_such_module"),
            ("c-backoff", "backoff", "behaviours.py"),
        ):
            event = wait_until_event(master, account_id, into)
            lines = event["traceback"].splitlines()
            assert 2 <= len(lines) <= 8, lines
            assert where in event["traceback"]
            assert lines[-1].startswith(event["reason"].removeprefix("task backoff: ")[:20])
            logged = master.log.find(event="account state", account_id=account_id, new=into)
            assert logged
            assert "traceback" not in logged[0]
            assert "\n" not in logged[0]["reason"]

        # An operator stops a worker: its accounts are down (not running, not moved).
        assert http.post("/workers/worker2/stop").json()["worker"]["state"] == "stopped"
        wait_until(lambda: state("b-down") == "down", 5, "b-down down")
        shown(master, http, "b-down", "down")
        in_listing(master, {"b-down": "down", "a-run": "running"})
        reached.add("down")

        # A worker killed (SIGKILL): its accounts are down at once, each one's down line
        # following the exit in the log before the worker runs again (in 3 s: backoff).
        mark = master.mark()
        worker1 = http.get("/workers/worker1").json()
        assert sorted(worker1["accounts"]) == ["a-run", "c-backoff"]
        os.kill(worker1["pid"], signal.SIGKILL)
        exited = master.log.wait_for(after=mark, event="worker exited", worker="worker1")
        assert exited["reason"] == "killed"
        after = master.log.events.index(exited)
        downs = [
            master.log.wait_for(after=after, event="account state", account_id=a, new="down")
            for a in ("a-run", "c-backoff")
        ]
        assert all(d["reason"] == "worker1 is down" for d in downs), downs
        again = master.log.wait_for(
            after=after, event="worker state", worker="worker1", new="running", timeout=20
        )
        assert max(map(master.log.events.index, downs)) < master.log.events.index(again)
    assert master.stop() == 0

    # Another shows a poison account quarantined, then an added account starting while
    # its worker imports a slow platform.
    poison = {
        "id": "poison",
        "platform": "testplatforms.behaviours:ExitSoon",
        "options": {"after_s": 0.3},
    }
    config = make_config(
        workers=1, accounts=[poison], accounts_per_worker=1, quarantine={"deaths": 2}
    )
    master = start_master(config)
    master.wait_running("worker1")
    with master.http() as http:
        wait_until(
            lambda: http.get("/accounts/poison").json()["state"] == "quarantined", 30, "poison"
        )
        shown(master, http, "poison", "quarantined")
        in_listing(master, {"poison": "quarantined"})
        reached.add("quarantined")

        slow = {"id": "slow", "platform": "testplatforms.slow_import:Demo"}
        assert http.post("/accounts", json=slow).status_code == 201
        # Importing takes 1.5 s in worker1, which has room again.
        wait_until(lambda: http.get("/accounts/slow").json()["worker"] == "worker1", 5, "placed")
        assert http.get("/accounts/slow").json()["state"] == "starting"
        sample = 'hiscrm_account_state{account="slow",state="starting"}'
        assert metric(http.get("/metrics").text, sample) == 1
        master.log.wait_for(event="account state", account_id="slow", new="starting", timeout=5)
        reached.add("starting")
        wait_until(lambda: http.get("/accounts/slow").json()["state"] == "running", 10, "runs")
    assert master.stop() == 0

    # elsewhere (another master of a cluster holds it) happens only in a cluster (test_cluster).
    assert reached == {str(s) for s in AccountState} - {AccountState.ELSEWHERE}


@pytest.mark.timeout(60)
def test_accounts_going_down_as_the_master_stops_are_not_warnings(
    start_master: MasterFactory,
) -> None:
    """A graceful stop takes every account down: expected, so logged at info; a worker
    that dies while the master runs takes its accounts down with a warning."""
    accounts = [{"id": f"acc-{n}", "platform": "demo", "options": {"rate": 2.0}} for n in (1, 2)]
    master = start_master(make_config(workers=1, accounts=accounts))
    pid = master.wait_running("worker1")
    for account in ("acc-1", "acc-2"):
        master.log.wait_for(event="account state", account_id=account, new="running")
    mark = master.mark()
    os.kill(pid, signal.SIGKILL)
    master.wait_running("worker1", after=mark)
    died = master.log.find(event="account state", new="down")
    assert {(e["account_id"], e["level"]) for e in died} == {
        ("acc-1", "warning"), ("acc-2", "warning")
    }  # fmt: skip
    for account in ("acc-1", "acc-2"):
        master.log.wait_for(event="account state", account_id=account, new="running", after=mark)
    assert master.stop() == 0
    downs = master.log.find(event="account state", new="down")[len(died) :]
    assert {e["account_id"] for e in downs} == {"acc-1", "acc-2"}
    assert {e["level"] for e in downs} == {"info"}, downs
