"""Two masters on one PostgreSQL, seen from one door: a client of n1's ``/events`` gets
the items of an account n2 runs (item events come from the store, not the worker's own
master), and a master stopped gracefully hands its accounts over at once, not after
``lease_ttl_s``: the other takes them within a fraction of it and ``GET /cluster`` no
longer lists the node that left."""

import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import MasterFactory, make_config
from harness import Master, wait_until
from sse_reader import SseReader
from test_cluster import leases
from test_cluster_routing import sender

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]

TTL_S = 40.0  # long: a hand-over that waited for expiry could not pass
ACCOUNTS = [f"acc-{i}" for i in range(1, 5)]


def start_node(start: MasterFactory, url: str, node: str) -> Master:
    config = make_config(
        [],
        workers=1,
        accounts_per_worker=4,
        store={"url": url},
        cluster={"node_id": node, "lease_ttl_s": TTL_S, "lease_renew_s": 1.0},
        events={"heartbeat_s": 1.0},
    )
    return start(config, env={"HISCRM_TEST_NODE": node})


def test_items_of_another_masters_account_stream_and_a_graceful_stop_hands_over_at_once(
    start_master: MasterFactory, pg_url: str, tmp_path: Path
) -> None:
    record = tmp_path / "sends"
    record.mkdir()
    n1 = start_node(start_master, pg_url, "n1")
    n1.api_url(30)
    with n1.http() as http:
        for seed, account in enumerate(ACCOUNTS):
            made = http.post("/accounts", json=sender(account, seed, record))
            assert made.status_code == 201, made.text
    wait_until(lambda: Counter(leases(pg_url).values()) == {"n1": 4}, 30, "n1 holds all")
    n2 = start_node(start_master, pg_url, "n2")
    n2.api_url(30)
    # n2 takes its share from n1, a few at a time, through release and claim.
    wait_until(
        lambda: Counter(leases(pg_url).values()) == {"n1": 2, "n2": 2}, 60, "two accounts each"
    )
    theirs = sorted(a for a, n in leases(pg_url).items() if n == "n2")

    # Items of n2's account, on n1's stream.
    stream = SseReader(n1.api_url(), n1.token, params={"types": "item", "account": theirs[0]})
    try:
        events = stream.wait(
            lambda es: any(e.name.startswith("item.") for e in es), 30, "an item of n2's account"
        )
        assert {e.data["account_id"] for e in events if e.name.startswith("item.")} == {theirs[0]}
    finally:
        stream.close()

    # A graceful stop of n2: n1 runs all four long before n2's leases could expire.
    stopped_at = time.monotonic()
    assert n2.stop(30) == 0
    with n1.http() as http:

        def all_running_on_n1() -> bool:
            items = http.get("/accounts", params={"limit": 100}).json()["items"]
            return len(items) == len(ACCOUNTS) and all(
                a["node"] == "n1" and a["state"] == "running" for a in items
            )

        wait_until(all_running_on_n1, TTL_S / 2, "n1 runs n2's accounts")
        assert time.monotonic() - stopped_at < TTL_S / 2
        cluster = http.get("/cluster").json()
        assert [n["node_id"] for n in cluster["nodes"]] == ["n1"]
        assert cluster["held"] == 4
    assert leases(pg_url) == dict.fromkeys(ACCOUNTS, "n1")
    assert n1.stop(30) == 0
