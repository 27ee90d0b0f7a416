"""The HTTP API against a real master over real HTTP: every route, auth, 4xx answers,
paging, mark-read surviving syncs, lifecycle actions, metrics."""

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from conftest import MasterFactory, make_config
from harness import Master, metric, wait_until, without_node

RECORDING = "testplatforms.recording"
BURST = 120


@pytest.fixture(scope="module")
def shared(
    start_module_master_each_store: MasterFactory, tmp_path_factory: pytest.TempPathFactory
) -> Master:
    """One master for the read-mostly tests, on SQLite and again on PostgreSQL."""
    signals = tmp_path_factory.mktemp("signals")
    accounts = [
        {"id": "burst", "platform": f"{RECORDING}:Burst", "options": {"count": BURST}},
        {"id": "demo-a", "platform": "demo", "options": {"rate": 20.0, "seed": 1}},
        {
            "id": "updater",
            "platform": f"{RECORDING}:UpdateOnSignal",
            "options": {"signal_dir": str(signals)},
        },
    ]
    master = start_module_master_each_store(make_config(workers=2, accounts=accounts))
    master.signals = signals  # type: ignore[attr-defined]
    master.wait_all_running(["worker1", "worker2"])
    with master.http() as http:
        wait_until(
            lambda: http.get("/accounts/burst/messages").json()["total"] == BURST,
            20,
            "burst stored",
        )
        wait_until(
            lambda: http.get("/accounts/demo-a/comments").json()["total"] > 0, 20, "demo comments"
        )
    return master


def error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"}
    return str(body["error"])


@pytest.mark.timeout(60)
def test_only_healthz_is_open_and_tokens_are_checked(shared: Master) -> None:
    url = shared.api_url()
    health = httpx.get(f"{url}/healthz").json()
    assert health["status"] == "ok", health
    checks = {"master", "store", "disk", "workers", "accounts", "platforms"}
    if shared.store_url is not None:  # a master on PostgreSQL keeps leases in a cluster
        checks.add("leases")
    assert set(health["checks"]) == checks
    assert {c["status"] for c in health["checks"].values()} == {"ok"}
    assert health["checks"]["workers"]["detail"] == "2/2 running"
    with shared.http() as http:
        spec = http.get("/openapi.json").json()
    real = {"worker_id": "worker1", "account_id": "burst", "item_id": "b00001", "request_id": "r1"}
    routes = [(m.upper(), path) for path, ops in spec["paths"].items() for m in ops]
    assert len(routes) >= 20
    for method, path in [*routes, ("GET", "/api/v1/openapi.json")]:
        concrete = path.format(**real).removeprefix("/api/v1")
        if concrete == "/healthz":
            continue
        response = httpx.request(method, f"{url}{concrete}")
        assert "missing bearer token" in error(response, 401), f"{method} {path}"
    with shared.http(token="not-the-token") as http:
        assert error(http.get("/status"), 401) == "invalid token"
        assert error(http.post("/workers/worker1/restart"), 401) == "invalid token"
    token_file = shared.state_dir / "token"
    assert oct(token_file.stat().st_mode & 0o777) == "0o600"


@pytest.mark.timeout(60)
def test_status_workers_and_accounts_report_live_truth(shared: Master) -> None:
    with shared.http() as http:
        status = http.get("/status").json()
        assert status["workers"]["running"] == 2
        assert status["workers_total"] == 2
        assert status["pid"] == shared.pid
        assert status["store"]["items"]["messages"] >= BURST
        assert status["sync"]["syncs"] > 0
        assert status["shutting_down"] is False

        workers = http.get("/workers").json()
        assert (workers["total"], workers["limit"], workers["offset"]) == (2, 100, 0)
        for worker in workers["items"]:
            process = psutil.Process(worker["pid"])
            assert (
                process.cmdline()[0] == f"hiscrm: {worker['id']} [{' '.join(worker['accounts'])}]"
            )
            assert process.ppid() == shared.pid
            assert worker["state"] == "running"
            assert 0 <= worker["heartbeat_age_s"] < 1.0  # beats every 0.2 s
            assert worker["rss_bytes"] > 10 * 2**20
            assert worker["last_exit"] is None
        one = http.get("/workers/worker1").json()
        assert one["accounts"] == ["burst", "updater"]

        accounts = {a["id"]: a for a in http.get("/accounts").json()["items"]}
        assert accounts["burst"]["worker"] == accounts["burst"]["home"] == "worker1"
        assert accounts["demo-a"]["worker"] == "worker2"
        assert accounts["demo-a"]["state"] == "running"
        assert accounts["demo-a"]["stale"] is False
        detail = http.get("/accounts/burst").json()
        assert detail["counts"]["messages"] == BURST
        assert detail["last_sync_at"] > 1_700_000_000_000


@pytest.mark.timeout(60)
def test_collections_page_filter_and_sort(shared: Master) -> None:
    with shared.http() as http:
        page = http.get("/accounts/burst/messages", params={"limit": 50, "offset": 100}).json()
        assert (page["total"], page["limit"], page["offset"], len(page["items"])) == (
            BURST,
            50,
            100,
            20,
        )
        newest_first = http.get("/accounts/burst/messages", params={"limit": 3}).json()["items"]
        assert [m["id"] for m in newest_first] == ["b00119", "b00118", "b00117"]
        oldest = http.get(
            "/accounts/burst/messages", params={"sort": "sent_at", "order": "asc", "limit": 1}
        ).json()
        assert oldest["items"][0]["id"] == "b00000"
        first_sent = oldest["items"][0]["sent_at"]
        window = http.get(
            "/accounts/burst/messages", params={"since": first_sent + 10, "until": first_sent + 20}
        ).json()
        assert window["total"] == 10
        assert (
            http.get("/accounts/burst/messages", params={"conversation_id": "c1"}).json()["total"]
            == BURST
        )
        assert (
            http.get("/accounts/burst/messages", params={"conversation_id": "nope"}).json()["total"]
            == 0
        )
        assert (
            http.get("/accounts/burst/messages", params={"is_read": "false"}).json()["total"]
            == BURST
        )
        item = http.get("/accounts/burst/messages/b00007").json()
        assert (item["id"], item["kind"], item["account_id"], item["version"], item["is_read"]) == (
            "b00007",
            "message",
            "burst",
            1,
            False,
        )
        for collection in ("conversations", "messages", "comments", "contents", "notifications"):
            body = http.get(f"/accounts/demo-a/{collection}", params={"limit": 5}).json()
            assert set(body) == {"items", "total", "limit", "offset", "truncated", "next_offset"}
            assert body["truncated"] is False
            assert len(body["items"]) <= 5
        conversations = http.get("/accounts/demo-a/conversations").json()["items"]
        assert conversations
        assert isinstance(conversations[0]["participants"], list)
        contents = http.get("/accounts/demo-a/contents", params={"sort": "views"}).json()["items"]
        assert [c["views"] for c in contents] == sorted(
            (c["views"] for c in contents), reverse=True
        )


@pytest.mark.parametrize(
    ("path", "params", "problem"),
    [
        ("/accounts/burst/messages", {"bogus": "1"}, "unknown query parameter 'bogus'"),
        ("/accounts/burst/messages", {"sort": "text"}, "query.sort"),
        ("/accounts/burst/messages", {"limit": "0"}, "query.limit"),
        ("/accounts/burst/messages", {"limit": "100000"}, "query.limit"),
        ("/accounts/burst/messages", {"offset": "-1"}, "query.offset"),
        (
            "/accounts/burst/messages",
            {"offset": str(2**64)},
            "query.offset",
        ),  # found by schemathesis
        ("/accounts/burst/messages", {"since": "yesterday"}, "query.since"),
        ("/accounts/burst/messages", {"is_read": "perhaps"}, "query.is_read"),
        ("/accounts/burst/notifications", {"is_read": "true"}, "unknown query parameter 'is_read'"),
        (
            "/accounts/burst/comments",
            {"conversation_id": "c1"},
            "unknown query parameter 'conversation_id'",
        ),
        ("/accounts/bad%20id!/messages", {}, "path.account_id"),
        ("/status", {"verbose": "1"}, "unknown query parameter 'verbose'"),
        ("/workers/worker1/logs", {"tail": "-5"}, "query.tail"),
    ],
)
@pytest.mark.timeout(60)
def test_bad_requests_answer_422_naming_the_problem(
    shared: Master, path: str, params: dict[str, str], problem: str
) -> None:
    with shared.http() as http:
        assert problem in error(http.get(path, params=params), 422)


@pytest.mark.timeout(60)
def test_unknown_things_answer_404(shared: Master) -> None:
    with shared.http() as http:
        assert "no account 'ghost'" in error(http.get("/accounts/ghost"), 404)
        assert "no account 'ghost'" in error(http.get("/accounts/ghost/messages"), 404)
        assert "no worker 'worker9'" in error(http.get("/workers/worker9"), 404)
        assert "no worker 'worker9'" in error(http.post("/workers/worker9/restart"), 404)
        assert "no message 'nope'" in error(http.get("/accounts/burst/messages/nope"), 404)
        assert "no message 'nope'" in error(http.post("/accounts/burst/messages/nope/read"), 404)
        assert error(http.get("/no/such/route"), 404)


@pytest.mark.timeout(60)
def test_mark_read_survives_the_next_sync_of_the_item(shared: Master) -> None:
    signals: Path = shared.signals  # type: ignore[attr-defined]
    with shared.http() as http:
        wait_until(
            lambda: http.get("/accounts/updater/messages/m1").status_code == 200, 10, "m1 stored"
        )
        marked = http.post("/accounts/updater/messages/m1/read").json()
        assert marked["is_read"] is True
        read_at = marked["read_at"]
        assert read_at > 1_700_000_000_000
        version = marked["version"]
        (signals / f"update-{version}").touch()
        wait_until(
            lambda: http.get("/accounts/updater/messages/m1").json()["version"] > version,
            10,
            "updated",
        )
        after = http.get("/accounts/updater/messages/m1").json()
        assert after["text"] != marked["text"]
        assert (after["is_read"], after["read_at"]) == (True, read_at)
        unread = http.get("/accounts/updater/messages", params={"is_read": "false"}).json()
        assert unread["total"] == 0


@pytest.mark.timeout(60)
def test_sync_on_request_resends_from_a_sequence_number(shared: Master) -> None:
    with shared.http() as http:
        answer = http.post("/accounts/burst/sync", params={"from_seq": 0})
        assert answer.status_code == 202
        done = answer.json()
        node = done.pop("node")  # the master that did it: in a cluster, its node id
        assert (node is None) == (shared.store_url is None), node
        assert done == {"account_id": "burst", "worker": "worker1", "from_seq": 0}
        assert http.post("/accounts/burst/sync").status_code == 202
        assert http.post("/accounts/burst/sync", params={"from_seq": 10**9}).status_code == 202
    wait_until(
        lambda: (
            f"account_id=burst from_seq=0 items={BURST}" in shared.worker_log("worker1").read_text()
        ),
        10,
        "the worker resent the account",
    )
    with shared.http() as http:
        page = http.get("/accounts/burst/messages", params={"limit": 1000}).json()
        assert page["total"] == BURST  # still once each ...
        assert {m["version"] for m in page["items"]} == {1}  # ... and unchanged


@pytest.mark.timeout(60)
def test_metrics_speak_prometheus(shared: Master) -> None:
    with shared.http() as http:
        response = http.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    text = without_node(response.text)
    if shared.store_url is not None:  # on PostgreSQL a master is a node of a cluster
        assert 'hiscrm_worker_up{node="' in response.text
    for name in (
        'hiscrm_worker_up{worker="worker1"} 1.0',
        "hiscrm_worker_restarts_total",
        'hiscrm_worker_data_sync_total{account="burst",worker="worker1"}',
        "hiscrm_worker_data_sync_errors_total",
        'hiscrm_worker_data_sync_last_success_timestamp_seconds{account="burst"}',
        "hiscrm_protocol_errors_total",
        'hiscrm_worker_errors_total{worker="worker1"} 0.0',
        'hiscrm_worker_rss_bytes{worker="worker2"}',
        "hiscrm_sync_commit_latency_seconds_bucket",
        'hiscrm_account_stale{account="demo-a"} 0.0',
    ):
        assert name in text, name


@pytest.mark.timeout(60)
def test_cluster_shows_this_master_holding_every_account_when_it_is_alone(
    shared: Master,
) -> None:
    """SQLite: a cluster of one, without leases; PostgreSQL: one node, its leases live."""
    clustered = shared.store_url is not None
    with shared.http() as http:
        wait_until(lambda: http.get("/cluster").json()["held"] == 3, 20, "every account held")
        cluster = http.get("/cluster").json()
        assert cluster["clustered"] is clustered
        assert (cluster["enabled"], cluster["free"]) == (3, 0)
        [me] = cluster["nodes"]
        assert (me["me"], me["state"], me["leases"]) == (True, "ok", 3)
        assert me["node_id"] == cluster["node_id"]
        assert (cluster["renewals"] > 0) is clustered
        assert cluster["last_error"] is None


@pytest.mark.timeout(90)
def test_lifecycle_actions_and_what_they_leave_behind(
    start_master_each_store: MasterFactory,
) -> None:
    slow = [
        {"id": f"acc-{n}", "platform": "tests.testplatforms.behaviours:SlowToStop"}
        for n in range(1, 5)
    ]  # each hand-over takes 0.4 s, so the reload below is still under way when stop comes
    master = start_master_each_store(make_config(workers=2, accounts=slow))
    pids = master.wait_all_running(["worker1", "worker2"])
    with master.http() as http:
        restarted = http.post("/workers/worker1/restart").json()
        assert restarted["action"] == "restart"
        assert restarted["previous_pid"] == pids["worker1"]
        assert restarted["worker"]["state"] == "running"
        assert restarted["worker"]["pid"] not in (None, pids["worker1"])
        assert restarted["worker"]["last_exit"]["reason"] == "restart"

        stopped = http.post("/workers/worker2/stop").json()
        assert (stopped["worker"]["state"], stopped["worker"]["pid"]) == ("stopped", None)
        time.sleep(1.5)  # longer than any backoff: a stopped worker stays stopped
        assert http.get("/workers/worker2").json()["state"] == "stopped"
        logs = http.get("/workers/worker2/logs", params={"tail": 5}).json()  # of a dead worker
        assert len(logs["lines"]) == 5
        assert any("worker stopping" in line for line in logs["lines"])
        assert (
            http.post("/workers/worker2/stop").json()["worker"]["state"] == "stopped"
        )  # idempotent
        started = http.post("/workers/worker2/start").json()
        assert started["worker"]["state"] == "running"
        assert (
            http.post("/workers/worker2/start").json()["worker"]["pid"] == started["worker"]["pid"]
        )

        refused = {}

        def stop_during_reload() -> None:
            with master.http() as other:
                wait_until(
                    lambda: (other.get("/status").json()["last_reload"] or {}).get("running"),
                    10,
                    "the reload to begin",
                )
                refused["answer"] = other.post("/workers/worker1/stop")

        during = threading.Thread(target=stop_during_reload)
        during.start()
        reload = http.post("/reload").json()
        during.join()
        assert "a reload is under way" in error(refused["answer"], 409)
        assert reload["complete"] is True
        assert all(s["accounts"] == 2 and s["max_gap_ms"] is not None for s in reload["steps"]), [
            (s["accounts"], s["max_gap_ms"]) for s in reload["steps"]
        ]
        assert [s["worker"] for s in reload["steps"]] == ["worker1", "worker2"]
        assert all(
            s["state"] == "running" and s["new_pid"] != s["old_pid"] for s in reload["steps"]
        )
    assert master.stop() == 0


@pytest.mark.timeout(90)
def test_concurrent_actions_on_one_worker_are_serialized(start_master: MasterFactory) -> None:
    master = start_master(make_config(workers=1))
    first = master.wait_running("worker1")
    results: list[dict[str, Any]] = []

    def restart() -> None:
        with master.http() as http:
            results.append(http.post("/workers/worker1/restart").json())

    threads = [threading.Thread(target=restart) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3
    assert all(r["worker"]["state"] == "running" for r in results)
    # Each restart began from the pid the one before it left: one chain, first -> ... -> now.
    following = {r["previous_pid"]: r["worker"]["pid"] for r in results}
    assert len(following) == 3, results
    pid = first
    for _ in range(3):
        pid = following[pid]
    with master.http() as http:
        assert http.get("/workers/worker1").json()["pid"] == pid
    assert master.stop() == 0


@pytest.mark.timeout(90)
def test_a_killed_worker_shows_its_exit_and_metrics_move(
    start_master_each_store: MasterFactory,
) -> None:
    accounts = [
        {"id": "acc-1", "platform": "demo", "options": {"rate": 20.0}},
        {
            "id": "bad",
            "platform": "testplatforms.behaviours:RaiseSoon",
            "options": {"after_s": 0.1},
        },
    ]
    master = start_master_each_store(make_config(workers=1, accounts=accounts))
    pid = master.wait_running("worker1")
    with master.http() as http:
        wait_until(
            lambda: (
                metric(
                    without_node(http.get("/metrics").text),
                    'hiscrm_worker_errors_total{worker="worker1"}',
                )
                >= 1
            ),
            10,
            "errors counted",
        )
        before = without_node(http.get("/metrics").text)
        syncs_before = metric(before, 'hiscrm_worker_data_sync_total{account="acc-1"')
        assert metric(before, 'hiscrm_worker_errors_total{worker="worker1"}') >= 1

        mark = master.mark()
        os.kill(pid, signal.SIGKILL)
        new_pid = master.wait_running("worker1", after=mark)
        worker = http.get("/workers/worker1").json()
        assert worker["pid"] == new_pid
        assert worker["restarts"] == 1
        assert worker["restarts_by_reason"] == {"killed": 1}
        last = worker["last_exit"]
        assert (last["signal"], last["code"], last["reason"]) == ("SIGKILL", None, "killed")
        assert last["log_tail"]
        assert "out-of-memory" in last["detail"]

        wait_until(
            lambda: (
                metric(
                    without_node(http.get("/metrics").text),
                    'hiscrm_worker_data_sync_total{account="acc-1"',
                )
                > syncs_before
            ),
            10,
            "more syncs counted",
        )
        after = without_node(http.get("/metrics").text)
        assert (
            metric(after, 'hiscrm_worker_restarts_total{reason="killed",worker="worker1"}') == 1.0
        )
        assert metric(after, 'hiscrm_worker_up{worker="worker1"}') == 1.0
    assert master.stop() == 0


@pytest.mark.timeout(60)
def test_metrics_can_be_public_while_the_rest_needs_the_token(
    start_master: MasterFactory,
) -> None:
    master = start_master(make_config(workers=1, api={"port": 0, "metrics_public": True}))
    master.wait_running("worker1")
    url = master.api_url()
    assert httpx.get(f"{url}/metrics").status_code == 200
    assert httpx.get(f"{url}/status").status_code == 401
    with master.http() as http:
        assert http.get("/status").status_code == 200
    assert master.stop() == 0


@pytest.mark.timeout(60)
def test_auth_can_be_off_on_loopback(start_master: MasterFactory) -> None:
    master = start_master(make_config(workers=1, api={"port": 0, "auth": False}))
    master.wait_running("worker1")
    url = master.api_url()
    assert httpx.get(f"{url}/status").status_code == 200
    assert httpx.get(f"{url}/metrics").status_code == 200
    assert not (master.state_dir / "token").exists()
    assert master.stop() == 0


@pytest.mark.timeout(60)
def test_start_on_a_starting_worker_answers_once_it_runs(start_master: MasterFactory) -> None:
    accounts = [{"id": "acc-1", "platform": "testplatforms.slow_import:Demo"}]
    config = make_config(workers=1, accounts=accounts, supervision={"fork_template": False})
    master = start_master(config)
    pid = master.wait_running("worker1")
    mark = master.mark()
    os.kill(pid, signal.SIGKILL)  # a first crash: restarted at once, starting for ~1.5 s
    master.log.wait_for(after=mark, event="worker state", worker="worker1", new="starting")
    with master.http(timeout=20) as http:
        began = time.monotonic()
        answer = http.post("/workers/worker1/start")
        took = time.monotonic() - began
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["worker"]["state"] == "running"
    assert result["worker"]["pid"] not in (None, pid)
    assert took < 15  # answered when it ran, not at the action's timeout
    assert master.stop() == 0


@pytest.mark.timeout(90)
def test_a_page_of_big_items_is_cut_by_bytes_and_says_where_to_go_on(
    start_master_each_store: MasterFactory,
) -> None:
    accounts = [
        {
            "id": "big",
            "platform": "testplatforms.behaviours:BigItems",
            "options": {"size": 200_000, "count": 120},
        }
    ]
    config = make_config(workers=1, accounts=accounts, api={"port": 0, "max_page_bytes": 2**21})
    master = start_master_each_store(config)
    master.wait_running("worker1")
    with master.http() as http:
        wait_until(
            lambda: http.get("/accounts/big/messages", params={"limit": 1}).json()["total"] == 120,
            30,
            "120 big messages stored",
        )
        seen: list[str] = []
        offset: int | None = 0
        pages = 0
        while offset is not None:
            answer = http.get(
                "/accounts/big/messages", params={"limit": 1000, "offset": offset, "order": "asc"}
            )
            assert answer.status_code == 200
            assert len(answer.content) <= 2**21 + 1024
            page = answer.json()
            assert page["items"]
            assert page["truncated"] is (page["next_offset"] is not None)
            seen += [m["id"] for m in page["items"]]
            offset = page["next_offset"]
            pages += 1
        assert seen == [f"big-{n:04d}" for n in range(120)]
        assert pages >= 12  # ~10 items of 200 kB fit in 2 MiB
        assert http.get("/workers/worker1").json()["restarts"] == 0
    assert not master.log.find(event="worker is hung: no heartbeat")
    assert master.stop() == 0
