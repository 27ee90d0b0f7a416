"""A master cut off from PostgreSQL (a proxy between them, cut by the test) while another
reaches it: the cut-off master stops its accounts before their leases can expire and
says so in ``/healthz``; the other takes them over; a write at the old epoch is refused;
when the database is back, the master joins again, takes its share back, and nothing it
had collected is lost."""

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import MasterFactory
from harness import Master, wait_until
from pg_server import PostgresServer
from tcp_proxy import TcpProxy
from test_cluster import assert_never_on_two_masters, cluster_config, leases, runs, serving

from hiscrm.master.data import pg_leases

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(150)]

TTL_S = 4.0
RENEW_S = 0.5
ACCOUNTS = {f"acc-{i:02d}" for i in range(1, 5)}


@pytest.fixture
def proxy(pg_server: PostgresServer) -> Iterator[TcpProxy]:
    cut = TcpProxy(pg_server.port)
    yield cut
    cut.close()


def start_node(start: MasterFactory, url: str, record_dir: Path, node: str) -> Master:
    config = cluster_config(url, record_dir, node)
    config["accounts"] = [a for a in config["accounts"] if a["id"] in ACCOUNTS]
    config.update(workers=1, accounts_per_worker=4)
    config["cluster"].update(lease_ttl_s=TTL_S, lease_renew_s=RENEW_S)
    return start(config, env={"HISCRM_TEST_NODE": node})


def numbers(url: str) -> dict[str, list[int]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT account_id, id FROM messages").fetchall()
    found: dict[str, list[int]] = {}
    for account_id, item_id in rows:
        found.setdefault(account_id, []).append(int(item_id[1:]))
    return {a: sorted(n) for a, n in found.items()}


def test_a_master_cut_off_from_the_store_stops_before_its_leases_expire_and_catches_up(
    start_master: MasterFactory,
    pg_url: str,
    pg_server: PostgresServer,
    proxy: TcpProxy,
    tmp_path: Path,
) -> None:
    record_dir = tmp_path / "runs"
    record_dir.mkdir()
    n1 = start_node(start_master, proxy.url_for(pg_url, pg_server.port), record_dir, "n1")
    n2 = start_node(start_master, pg_url, record_dir, "n2")

    def balanced() -> bool:
        return Counter(leases(pg_url).values()) == {"n1": 2, "n2": 2}

    wait_until(balanced, 60, "two accounts on each master")
    now = time.time()
    wait_until(lambda: set(serving(record_dir, now)) == ACCOUNTS, 30, "every account served")
    with n1.http() as http:
        wait_until(lambda: http.get("/healthz").status_code == 200, 20, "n1 healthy")
        assert http.get("/healthz").json()["checks"]["leases"]["status"] == "ok"
    with psycopg.connect(pg_url) as conn:
        epochs = dict(
            conn.execute(
                "SELECT account_id, epoch FROM account_leases WHERE node_id = 'n1'"
            ).fetchall()
        )
    assert len(epochs) == 2

    # Cut n1 off. Its last renewal was sent before now: its leases expire by now + ttl.
    proxy.cut()
    cut_at = time.time()
    with n1.http() as http:

        def failing() -> bool:
            health = http.get("/healthz")
            check = health.json()["checks"].get("leases", {})
            return health.status_code == 503 and check.get("status") == "failing"

        wait_until(failing, TTL_S, "n1's /healthz failing on its leases")
        stopped = n1.log.wait_for(
            TTL_S, event="leases lost; stopping the accounts", where=lambda e: "expire" in e["why"]
        )
        assert sorted(stopped["accounts"]) == sorted(epochs)
        detail = http.get("/healthz").json()["checks"]["leases"]["detail"]
        assert detail.startswith("cannot renew the leases for "), detail
        assert "stopped before" in detail

    def taken_over() -> bool:
        served = serving(record_dir, time.time() - 0.5)
        return all(served.get(a) == "n2" for a in ACCOUNTS)

    wait_until(taken_over, TTL_S + 10, "n2 serves every account")
    assert time.time() - cut_at <= TTL_S + 2 + 1
    for account_id in epochs:  # n1's tasks ended before its leases could expire
        last = max(r["until"] for r in runs(record_dir)[account_id] if r["node"] == "n1")
        assert last < cut_at + TTL_S, f"{account_id} ran on n1 until {last - cut_at:.2f} s"
    assert_never_on_two_masters(record_dir)

    # A write at n1's old epoch, committed late, is refused in its transaction.
    with psycopg.connect(pg_url, autocommit=True) as conn, conn.transaction():
        refused = pg_leases.stale(conn, "n1", dict(epochs))
    assert set(refused) == set(epochs)
    assert all("held by n2" in why for why in refused.values()), refused

    # The database is back for n1: it joins again, takes its share back, and is healthy.
    proxy.restore()
    wait_until(balanced, 60, "n1 holds its share again")
    with n1.http() as http:
        wait_until(lambda: http.get("/healthz").json()["checks"]["leases"]["status"] == "ok",
                   20, "n1's leases healthy")  # fmt: skip
    now = time.time()
    wait_until(lambda: set(serving(record_dir, now)) == ACCOUNTS, 30, "every account served")
    assert_never_on_two_masters(record_dir)
    # Nothing collected is lost: every account's messages are numbered without a hole.
    for master in (n1, n2):
        assert master.stop(30) == 0
    assert leases(pg_url) == {}
    for account_id, got in numbers(pg_url).items():
        assert got == list(range(len(got))), f"{account_id}: holes in {got}"
    assert set(numbers(pg_url)) == ACCOUNTS
