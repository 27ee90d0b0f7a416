"""Three masters on one PostgreSQL: each account runs on exactly one master at any time,
a killed master's accounts are taken by the others within ``lease_ttl_s`` + 2 s with no
item lost or duplicated, a master that comes back takes a fair share back gradually, and
a write with a stale lease epoch is refused."""

import itertools
import json
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import MasterFactory, make_config
from harness import Master, wait_until
from test_ctl import ctl

pytestmark = pytest.mark.postgres

ACCOUNTS = 30
TTL_S = 3.0
RENEW_S = 0.5
NODES = ("n1", "n2", "n3")


def cluster_config(url: str, record_dir: Path, node: str) -> dict[str, Any]:
    accounts = [
        {
            "id": f"acc-{i:02d}",
            "platform": "testplatforms.cluster:Served",
            "options": {"record_dir": str(record_dir), "every_s": 0.2},
        }
        for i in range(1, ACCOUNTS + 1)
    ]
    return make_config(
        accounts,
        workers=2,
        accounts_per_worker=15,
        store={"url": url},
        cluster={"node_id": node, "lease_ttl_s": TTL_S, "lease_renew_s": RENEW_S},
    )


def start_node(start: MasterFactory, url: str, record_dir: Path, node: str) -> Master:
    return start(cluster_config(url, record_dir, node), env={"HISCRM_TEST_NODE": node})


def leases(url: str) -> dict[str, str]:
    """Account -> the node holding a live lease on it (none before the schema is made)."""
    with psycopg.connect(url) as conn:
        try:
            rows = conn.execute(
                "SELECT account_id, node_id FROM account_leases "
                "WHERE node_id IS NOT NULL AND expires_at > now()"
            ).fetchall()
        except psycopg.errors.UndefinedTable:
            return {}
    return {r[0]: r[1] for r in rows}


def runs(record_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Per account, each run of its task: node, pid, from and until (its last line)."""
    found: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(record_dir.glob("*.runs")):
        by_run: dict[tuple[str, int, float], dict[str, Any]] = {}
        current: dict[tuple[str, int], tuple[str, int, float]] = {}
        for line in path.read_text().splitlines():
            if not line.endswith("}"):
                continue  # a line being written
            entry = json.loads(line)
            who = (entry["node"], entry["pid"])
            if entry["what"] == "start":
                current[who] = (*who, entry["at"])
                by_run[current[who]] = {"node": who[0], "pid": who[1], "from": entry["at"]}
            if who in current:
                by_run[current[who]]["until"] = entry["at"]
        found[path.stem] = sorted(by_run.values(), key=lambda r: r["from"])
    return found


def assert_never_on_two_masters(record_dir: Path) -> None:
    for account_id, account_runs in runs(record_dir).items():
        for before, after in itertools.pairwise(account_runs):
            assert after["from"] >= before["until"], (
                f"{account_id} ran on {before['node']} (pid {before['pid']}) until "
                f"{before['until']} and on {after['node']} (pid {after['pid']}) from {after['from']}"
            )


def serving(record_dir: Path, since: float = 0.0) -> dict[str, str]:
    """Account -> the node whose task of it wrote last, if that was after ``since``."""
    latest: dict[str, str] = {}
    for account_id, account_runs in runs(record_dir).items():
        last = max(account_runs, key=lambda r: r["until"], default=None)
        if last is not None and last["until"] > since:
            latest[account_id] = last["node"]
    return latest


def check_any_door(master: Master, url: str) -> None:
    """Any master shows the whole cluster: the nodes, every account with its owner node
    and the state its owner reported; metrics and events carry the node."""
    with master.http() as http:

        def cluster_settled() -> bool:
            cluster = http.get("/cluster").json()
            return {n["node_id"]: (n["leases"], n["state"]) for n in cluster["nodes"]} == {
                node: (10, "ok") for node in NODES
            }

        wait_until(cluster_settled, 10, "GET /cluster shows 10 leases on each node")
        cluster = http.get("/cluster").json()
        assert cluster["node_id"] == "n1"
        assert cluster["clustered"] is True
        assert (cluster["enabled"], cluster["free"], cluster["held"]) == (ACCOUNTS, 0, 10)
        assert cluster["renewals"] > 0
        assert cluster["last_error"] is None
        assert [n["me"] for n in cluster["nodes"]] == [True, False, False]

        def accounts_shown() -> bool:
            items = http.get("/accounts", params={"limit": 100}).json()["items"]
            return {a["id"]: a["node"] for a in items} == leases(url) and all(
                a["state"] == "running" for a in items
            )

        wait_until(accounts_shown, 10, "every account running, with its node, seen from n1")
        elsewhere = http.get("/accounts/" + next(a for a, n in leases(url).items() if n == "n2"))
        assert elsewhere.json()["reason"] == "runs on n2 (its state as it reported it)"
        assert elsewhere.json()["worker"] is None
        metrics = http.get("/metrics").text
        assert 'hiscrm_cluster_leases_held{node="n1"} 10.0' in metrics
        assert 'hiscrm_worker_up{node="n1",worker="worker1"} 1.0' in metrics
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT data FROM events WHERE name = 'worker.state'").fetchall()
    assert {json.loads(r[0]).get("node") for r in rows} == set(NODES)  # each says whose
    printed = ctl(master, "cluster")
    assert printed.returncode == 0, printed.stderr
    assert "n2" in printed.stdout
    assert "this master: 10 leases" in printed.stdout


def message_numbers(url: str) -> dict[str, list[int]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT account_id, id FROM messages").fetchall()
    numbers: dict[str, list[int]] = {}
    for account_id, item_id in rows:
        numbers.setdefault(account_id, []).append(int(item_id[1:]))
    return {a: sorted(n) for a, n in numbers.items()}


@pytest.mark.timeout(150)
def test_three_masters_share_the_accounts_and_take_over_a_killed_one(
    start_master: MasterFactory, pg_url: str, tmp_path: Path
) -> None:
    record_dir = tmp_path / "runs"
    record_dir.mkdir()
    masters = {node: start_node(start_master, pg_url, record_dir, node) for node in NODES}
    all_ids = {f"acc-{i:02d}" for i in range(1, ACCOUNTS + 1)}

    def balanced() -> bool:
        held = Counter(leases(pg_url).values())
        return sum(held.values()) == ACCOUNTS and all(held[n] == 10 for n in NODES)

    wait_until(balanced, 60, "30 accounts leased, 10 to each master")
    now = time.time()
    wait_until(lambda: set(serving(record_dir, now)) == all_ids, 30, "every account served")
    assert serving(record_dir, now) == leases(pg_url)
    assert_never_on_two_masters(record_dir)
    check_any_door(masters["n1"], pg_url)

    # SIGKILL one: its accounts are served by the others within lease_ttl_s + 2 s.
    victim = masters["n2"]
    theirs = {a for a, n in leases(pg_url).items() if n == "n2"}
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait(10)
    killed_at = time.time()

    def taken_over() -> bool:
        served = serving(record_dir, time.time() - 0.5)
        return all(served.get(a) in ("n1", "n3") for a in theirs)

    took = wait_until(taken_over, TTL_S + 10, "the killed master's accounts served elsewhere")
    assert time.time() - killed_at <= TTL_S + 2 + 0.5, f"took {took:.1f} s"
    assert_never_on_two_masters(record_dir)
    with masters["n1"].http() as http:

        def seen_lost() -> bool:
            nodes = {n["node_id"]: n for n in http.get("/cluster").json()["nodes"]}
            return nodes["n2"]["state"] == "lost" and nodes["n2"]["leases"] == 0

        wait_until(seen_lost, 10, "n1 sees n2 lost")

    # Back again: it takes a fair share back, a few at a time, never at once.
    masters["n2"] = victim.start()
    wait_until(balanced, 60, "the returning master holds its share again")
    now = time.time()
    wait_until(lambda: set(serving(record_dir, now)) == all_ids, 30, "every account served")
    assert serving(record_dir, now) == leases(pg_url)
    assert_never_on_two_masters(record_dir)
    claimed = masters["n2"].log.find(event="leases claimed")
    assert len(claimed) >= 2, claimed
    assert all(len(e["accounts"]) <= 4 for e in claimed), claimed

    # No item lost or duplicated: every account's messages are numbered without a hole.
    for master in masters.values():
        assert master.stop(30) == 0
    assert leases(pg_url) == {}, "a graceful stop lets every lease go"
    numbers = message_numbers(pg_url)
    for account_id in all_ids:
        got = numbers.get(account_id, [])
        assert got == list(range(len(got))), f"{account_id}: holes in {got}"
