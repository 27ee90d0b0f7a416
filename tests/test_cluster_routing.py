"""Two masters on one PostgreSQL: an action asked of one master for an account the other
holds is carried out once, by the holder, and its answer says which node did it: a sync
now, a reply (stored by any master, sent by the holder), a reply's cancel, and account
changes (the holder follows the registry as soon as it changes)."""

import json
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from conftest import MasterFactory, make_config
from harness import Master, wait_until
from test_cluster import leases
from testplatforms.senders import recorded_sends

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]

NODES = ("n1", "n2")
ACCOUNTS = [f"acc-{i}" for i in range(1, 5)]


def start_node(start: MasterFactory, url: str, node: str) -> Master:
    config = make_config(
        [],  # the accounts are made through the API (the config file's cannot be changed)
        workers=1,
        accounts_per_worker=2,
        store={"url": url},
        cluster={"node_id": node, "lease_ttl_s": 6.0, "lease_renew_s": 2.0},
    )
    return start(config, env={"HISCRM_TEST_NODE": node})


def sender(account_id: str, seed: int, record: Path) -> dict[str, Any]:
    options = {"rate": 2.0, "seed": seed, "record_dir": str(record), "send_delay_s": 0.3}
    return {"id": account_id, "platform": "testplatforms.senders:Sender", "options": options}


def reply(http: httpx.Client, account: str, request_id: str) -> httpx.Response:
    body = {"conversation_id": "conv-1", "text": "hello", "request_id": request_id}
    return http.post(f"/accounts/{account}/messages", json=body)


def failed_reply(url: str, account: str, request_id: str) -> None:
    """A reply of ``account`` that failed, written straight into the store (as if its
    platform had refused it), for an operator to retry."""
    action = {"kind": "message", "conversation_id": "conv-1", "text": "again"}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO outbox (account_id, request_id, seq, body_hash, action, target, state, "
            "error, attempts, created_at, updated_at) VALUES (%s, %s, "
            "(SELECT coalesce(max(seq), 0) + 1 FROM outbox), 'h', %s, 'conversation:conv-1', 'failed', "
            "'refused', 1, 1, 1)",
            (account, request_id, json.dumps(action)),
        )


def commands(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT account_id, kind, requested_by, state, node, error FROM commands ORDER BY id"
        ).fetchall()


def test_actions_on_another_masters_account_are_carried_out_once_by_its_holder(
    start_master: MasterFactory, pg_url: str, tmp_path: Path
) -> None:
    record = tmp_path / "sends"
    record.mkdir()
    masters = {node: start_node(start_master, pg_url, node) for node in NODES}
    for master in masters.values():
        master.api_url(30)  # listening
    with masters["n1"].http() as http:  # made through n1: n2 follows the registry
        for seed, account in enumerate(ACCOUNTS):
            made = http.post("/accounts", json=sender(account, seed, record))
            assert made.status_code == 201, made.text
    wait_until(
        lambda: Counter(leases(pg_url).values()) == {"n1": 2, "n2": 2}, 60, "two accounts each"
    )
    theirs = sorted(a for a, n in leases(pg_url).items() if n == "n2")
    mine = sorted(a for a, n in leases(pg_url).items() if n == "n1")
    n1, n2 = masters["n1"], masters["n2"]
    with n1.http() as http:
        for account in ACCOUNTS:
            wait_until(
                lambda a=account: http.get(f"/accounts/{a}/conversations/conv-1").is_success,
                30,
                f"{account}'s conversations stored",
            )

        # n1 knows the owner from its own lease rounds: once it shows n2 as the holder,
        # sync now, asked of n1, for n2's account: n2's worker does it, and says so.
        wait_until(
            lambda: http.get(f"/accounts/{theirs[0]}").json().get("node") == "n2",
            10,
            "n1 sees n2 holding the account",
        )
        synced = http.post(f"/accounts/{theirs[0]}/sync")
        assert synced.status_code == 202, synced.text
        assert synced.json() == {
            "account_id": theirs[0],
            "worker": "worker1",
            "from_seq": None,
            "node": "n2",
        }
        asked = n2.log.wait_for(event="routed command carried out", account_id=theirs[0])
        assert asked["kind"] == "sync"
        assert n1.log.find(event="routed command carried out") == []
        # One of its own: done here, without the store's round trip.
        own = http.post(f"/accounts/{mine[0]}/sync")
        assert own.json()["node"] == "n1"
        assert commands(pg_url) == [(theirs[0], "sync", "n1", "done", "n2", None)]

        # A reply stored through n1 for n2's account: sent once, by n2's worker.
        made = reply(http, theirs[0], "r-1")
        assert made.status_code == 202, made.text
        assert made.json()["node"] == "n2"  # the holder it goes to
        assert reply(http, mine[0], "r-own").json()["node"] == "n1"
        wait_until(
            lambda: http.get(f"/accounts/{theirs[0]}/outbox/r-1").json()["state"] == "sent",
            20,
            "the reply sent",
        )
        sends = recorded_sends(record, theirs[0])
        assert [(s["request_id"], s["node"]) for s in sends] == [("r-1", "n2")]
        assert n1.log.find(event="reply state", account_id=theirs[0]) == []
        assert [e["new"] for e in n2.log.find(event="reply state", account_id=theirs[0])] == [
            "sending",
            "sent",
        ]

    # An account change made through n1 is applied by n2, which runs the account.
    with n2.http() as http2:
        assert http2.get(f"/accounts/{theirs[1]}").json()["state"] == "running"
    with n1.http() as http:
        options = {**sender(theirs[1], 9, record)["options"], "rate": 3.0}
        changed = http.patch(f"/accounts/{theirs[1]}", json={"options": options})
        assert changed.status_code == 200, changed.text
        n2.log.wait_for(
            event="account changed; its task restarts with the change",
            account_id=theirs[1],
            enabled=True,
        )
        # A reply's cancel, asked of n1, is answered by n2 (here: too late, it was sent).
        assert reply(http, theirs[0], "r-2").status_code == 202
        wait_until(
            lambda: http.get(f"/accounts/{theirs[0]}/outbox/r-2").json()["state"] == "sent",
            20,
            "the second reply sent",
        )
        late = http.delete(f"/accounts/{theirs[0]}/outbox/r-2")
        assert late.status_code == 409, late.text
        assert late.json()["error"].startswith("n2: the reply is sent")
        # A retry, asked of n1, is done by n2, and says so.
        failed_reply(pg_url, theirs[0], "r-3")
        retried = http.post(f"/accounts/{theirs[0]}/outbox/r-3/retry")
        assert retried.status_code == 200, retried.text
        assert (retried.json()["state"], retried.json()["node"]) == ("queued", "n2")
        wait_until(
            lambda: http.get(f"/accounts/{theirs[0]}/outbox/r-3").json()["state"] == "sent",
            20,
            "the retried reply sent",
        )
        # Lifting a quarantine, asked of n1, is n2's to do: its answer names n2 (here the
        # account is not quarantined, which n2 says).
        released = http.post(f"/accounts/{theirs[0]}/release")
        assert released.status_code == 409, released.text
        assert released.json()["error"] == f"n2: account {theirs[0]!r} is not quarantined"
    assert [s["request_id"] for s in recorded_sends(record, theirs[0])] == ["r-1", "r-2", "r-3"]
    states = Counter(c[3] for c in commands(pg_url))
    assert states == {"done": 2, "failed": 2}
    kinds = Counter(c[1] for c in commands(pg_url))
    assert kinds == {"sync": 1, "reply.cancel": 1, "reply.retry": 1, "account.release": 1}
    for master in masters.values():
        assert master.stop(30) == 0
    rows = commands(pg_url)
    assert all(r[4] == "n2" for r in rows), json.dumps(rows)


@pytest.mark.timeout(120)
def test_a_quarantine_is_lifted_by_the_master_that_holds_the_account(
    start_master: MasterFactory, pg_url: str
) -> None:
    """The quarantine lives with the account's holder: lifting it through another master
    is carried out there, and the answer is the holder's view, naming it."""
    masters = {}
    for node in NODES:
        config = make_config(
            [],
            workers=1,
            accounts_per_worker=2,
            store={"url": pg_url},
            cluster={"node_id": node, "lease_ttl_s": 6.0, "lease_renew_s": 2.0},
            quarantine={"deaths": 2, "release_after_s": 600.0},
        )
        masters[node] = start_master(config, env={"HISCRM_TEST_NODE": node})
    for master in masters.values():
        master.api_url(30)
    poison = {
        "id": "poison",
        "platform": "testplatforms.behaviours:ExitSoon",
        "options": {"after_s": 0.5},
    }
    with masters["n1"].http() as http:
        assert http.post("/accounts", json=poison).status_code == 201
    wait_until(lambda: "poison" in leases(pg_url), 30, "the account leased")
    holder = leases(pg_url)["poison"]
    other = next(n for n in NODES if n != holder)
    with masters[holder].http() as http:
        wait_until(lambda: http.get("/accounts/poison").json()["quarantined"], 60, "quarantined")
    with masters[other].http() as http:
        wait_until(
            lambda: http.get("/accounts/poison").json()["state"] == "quarantined",
            20,
            f"{other} shows it quarantined (as {holder} reported)",
        )
        released = http.post("/accounts/poison/release")
        assert released.status_code == 200, released.text
        assert released.json()["node"] == holder
        assert released.json()["quarantined"] is False
    masters[holder].log.wait_for(
        event="account released from quarantine by the operator", account_id="poison"
    )
    assert masters[other].log.find(event="account released from quarantine by the operator") == []
    assert [(c[1], c[3], c[4]) for c in commands(pg_url)] == [("account.release", "done", holder)]
    for master in masters.values():
        assert master.stop(30) == 0
