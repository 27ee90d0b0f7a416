"""An account that kills the workers it runs in is quarantined: it runs alone, and the
healthy accounts keep syncing throughout. (The rule itself: ``test_quarantine.py``.)"""

import json
import os
import signal
import time

import pytest
from conftest import MasterFactory, make_config
from harness import count, metric, wait_until
from test_ctl import ctl


@pytest.mark.timeout(240)
def test_a_poison_account_is_quarantined_and_the_others_keep_syncing(
    start_master: MasterFactory,
) -> None:
    accounts = [
        {
            "id": "poison",
            "platform": "testplatforms.behaviours:ExitSoon",
            "options": {"after_s": 1.0},
        },
        {"id": "demo-a", "platform": "demo", "options": {"rate": 5.0, "seed": 1}},
        {"id": "demo-b", "platform": "demo", "options": {"rate": 5.0, "seed": 2}},
    ]
    config = make_config(
        workers=2,
        accounts=accounts,
        supervision={"reassign_after_s": 10.0},
        quarantine={"release_after_s": 8.0},
    )
    master = start_master(config)
    master.wait_all_running(["worker1", "worker2"])
    began = time.monotonic()
    with master.http() as http:

        def account(account_id: str) -> dict:
            return http.get(f"/accounts/{account_id}").json()

        wait_until(lambda: account("poison")["state"] == "quarantined", 60, "quarantined")
        quarantined_after = time.monotonic() - began
        poison = account("poison")
        assert poison["quarantined"] is True
        metrics = http.get("/metrics").text
        assert metric(metrics, 'hiscrm_account_quarantined{account="poison"}') == 1
        assert metric(metrics, 'hiscrm_account_state{account="poison",state="quarantined"}') == 1
        assert poison["worker"] in (None, "solo-poison")
        assert poison["home"] == "solo-poison"
        master.log.wait_for(
            event="account quarantined: its workers die while it runs; it runs alone from now on",
            account_id="poison",
        )

        # The healthy accounts keep syncing during the whole minute after: each one's
        # stored messages grow in every window of at most 5 s; the configured workers,
        # once back from the death that led to the quarantine, run throughout and restart
        # no more (the poison dies alone, on its own worker).
        def workers_now() -> dict[str, dict]:
            return {w["id"]: w for w in http.get("/workers").json()["items"]}

        def grown(before: dict[str, int]) -> bool:
            return all(count(master.db, "messages", a) > n for a, n in before.items())

        configured = ("worker1", "worker2")
        restarts: dict[str, int] | None = None  # once both run again
        counts = {a: count(master.db, "messages", a) for a in ("demo-a", "demo-b")}
        minute_ends, windows = time.monotonic() + 60, 0
        while time.monotonic() < minute_ends:
            at = time.monotonic() - began
            wait_until(lambda c=counts: grown(c), 5, f"both syncing from {at:.0f} s: {counts}")
            counts = {a: count(master.db, "messages", a) for a in counts}
            workers = workers_now()
            states = {w: workers[w]["state"] for w in configured}
            if restarts is None and set(states.values()) == {"running"}:
                restarts = {w: workers[w]["restarts"] for w in configured}
            elif restarts is not None:
                assert {w: workers[w]["restarts"] for w in configured} == restarts, workers
                assert set(states.values()) == {"running"}, states
            windows += 1
        assert windows >= 12
        assert restarts is not None, "the configured workers did not both run again"
        assert restarts["worker2"] == 0
        assert restarts["worker1"] <= 4, workers["worker1"]["restarts_by_reason"]
        workers = workers_now()
        assert "solo-poison" in workers
        # The poison keeps dying alone, with backoff; the configured workers run.
        assert workers["worker1"]["state"] == workers["worker2"]["state"] == "running"
        # A healthy account quarantined beside it runs alone without trouble and comes back.
        wait_until(
            lambda: (
                not account("demo-b")["quarantined"] and account("demo-b")["state"] == "running"
            ),
            40,
            "demo-b back",
        )
        health = http.get("/healthz").json()
        assert health["status"] == "degraded"
        assert "quarantined: poison" in health["checks"]["accounts"]["detail"]

    # What an operator sees, and releasing by hand.
    listing = ctl(master, "accounts")
    assert listing.returncode == 0, listing.stderr
    assert "quarantined" in next(line for line in listing.stdout.splitlines() if "poison" in line)
    status = ctl(master, "status")
    assert "degraded" in status.stdout.splitlines()[0]
    assert "1 quarantined" in status.stdout.splitlines()[0]
    released = ctl(master, "--json", "account", "release", "poison")
    assert released.returncode == 0, released.stderr
    assert json.loads(released.stdout)["quarantined"] is False
    again = ctl(master, "--json", "account", "release", "demo-a")
    assert again.returncode == 1
    assert "is not quarantined" in json.loads(again.stdout)["error"]
    assert quarantined_after < 60
    assert master.stop() == 0


@pytest.mark.timeout(120)
def test_an_account_that_exhausts_memory_is_quarantined(start_master: MasterFactory) -> None:
    """The test stands in for the OOM killer: it SIGKILLs a worker whose memory grows past
    200 MB (no cgroups on these machines)."""
    accounts = [
        {"id": "hog", "platform": "testplatforms.behaviours:Hog", "options": {"max_mb": 400}},
        {"id": "demo-a", "platform": "demo", "options": {"rate": 5.0, "seed": 1}},
        {"id": "demo-b", "platform": "demo", "options": {"rate": 5.0, "seed": 2}},
    ]
    master = start_master(make_config(workers=2, accounts=accounts))
    master.wait_all_running(["worker1", "worker2"])
    kills = 0
    with master.http() as http:
        deadline = time.monotonic() + 60
        while http.get("/accounts/hog").json()["state"] != "quarantined":
            assert time.monotonic() < deadline, "not quarantined within 60 s"
            for worker in http.get("/workers").json()["items"]:
                if worker["pid"] and (worker["rss_bytes"] or 0) > 200 * 2**20:
                    os.kill(worker["pid"], signal.SIGKILL)  # what the OOM killer would do
                    kills += 1
            time.sleep(0.05)
        assert 2 <= kills <= 4
        exits = master.log.find(event="worker exited", reason="killed")
        assert exits
        assert "out-of-memory" in exits[0]["detail"]
        before = count(master.db, "messages", "demo-a")
        wait_until(lambda: count(master.db, "messages", "demo-a") > before + 5, 10, "demo-a on")
        assert http.get("/workers/worker2").json()["restarts"] == 0
    assert master.stop() == 0
