"""What operators and their tools expect: probes and scrapes at the root, the token before
anything else is told, Swagger UI behind the token, times in ms, counters that say since
when they count, and an exit code that tells a forced stop."""

import http.client
import json
import os
import signal
from urllib.parse import urlsplit

import httpx
import pytest
from conftest import MasterFactory, make_config
from harness import Master, wait_until


@pytest.fixture(scope="module")
def master(start_module_master_each_store: MasterFactory) -> Master:
    """One master for the module, on SQLite and again on PostgreSQL."""
    master = start_module_master_each_store(make_config(workers=1, accounts=None))
    master.wait_running("worker1")
    return master


def root(master: Master) -> str:
    return master.api_url().removesuffix("/api/v1")


@pytest.mark.timeout(30)
def test_healthz_and_metrics_at_the_root_follow_the_same_rules(master: Master) -> None:
    base = root(master)
    assert httpx.get(f"{base}/healthz").json()["status"] in ("ok", "degraded")
    assert httpx.get(f"{base}/metrics").status_code == 401  # not public by default
    with httpx.Client(headers={"Authorization": f"Bearer {master.token}"}) as http:
        assert "hiscrm_worker_up" in http.get(f"{base}/metrics").text
        at_root = http.get(f"{base}/healthz").json()
        under_api = http.get(f"{master.api_url()}/healthz").json()
        for health in (at_root, under_api):
            del health["checks"]["disk"]["detail"]  # free space moves between two reads
        assert at_root == under_api


@pytest.mark.timeout(30)
def test_an_error_that_echoes_a_lone_surrogate_is_still_json(master: Master) -> None:
    """JSON's ``\\ud800`` escape carries text that is not Unicode; an error that echoes
    it answers 4xx JSON in UTF-8 (not a 500), and the kept-alive connection goes on."""
    url = urlsplit(master.api_url())
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=20)
    headers = {"Authorization": f"Bearer {master.token}", "Content-Type": "application/json"}
    try:
        for path, body, field in (
            ("/accounts/acc-1/messages", {"conversation_id": "conv-3", "text": "a\ud800b"}, "text"),
            (
                "/accounts/acc-1/messages",
                {"conversation_id": "conv-3", "text": "hi", "request_id": "r-\ud800"},
                "request_id",
            ),
            ("/accounts", {"id": "t\ud800", "platform": "demo"}, "id"),
            ("/accounts", {"id": "t", "options": {"k": "\ud800"}}, "options.k"),
        ):
            conn.request("POST", url.path + path, json.dumps(body).encode(), headers)
            answer = conn.getresponse()
            text = answer.read().decode("utf-8")  # valid UTF-8
            assert 400 <= answer.status < 500, (body, text)
            assert field in json.loads(text)["error"], (body, text)
            assert "\\ud800" in text  # shown escaped
            assert not answer.will_close, (body, answer.getheaders())
        conn.request("GET", url.path + "/accounts", headers=headers)
        answer = conn.getresponse()
        assert answer.status == 200, answer.read()
        answer.read()
    finally:
        conn.close()


@pytest.mark.timeout(30)
def test_the_token_comes_before_routing(master: Master) -> None:
    url = master.api_url()
    for method, path in (
        ("DELETE", "/status"),  # a 405 with the token
        ("GET", "/status/"),  # a redirect with the token
        ("GET", "/no-such-route"),  # a 404 with the token
        ("GET", "/docs"),
        ("GET", "/openapi.json"),
    ):
        answer = httpx.request(method, f"{url}{path}", follow_redirects=False)
        assert answer.status_code == 401, (method, path, answer.status_code)
        assert answer.headers["www-authenticate"] == "Bearer"
        assert "bearer token" in answer.json()["error"]
        wrong = httpx.request(
            method, f"{url}{path}", headers={"Authorization": "Bearer nope"}, follow_redirects=False
        )
        assert (wrong.status_code, wrong.json()["error"]) == (401, "invalid token")
    with master.http() as http:
        not_allowed = http.delete("/status")
        assert not_allowed.status_code == 405
        assert not_allowed.headers["allow"] == "GET"
        assert not_allowed.json()["error"]


@pytest.mark.timeout(30)
def test_swagger_ui_is_behind_the_token(master: Master) -> None:
    with master.http() as http:
        page = http.get("/docs")
        assert page.status_code == 200
        assert "swagger" in page.text.lower()
        assert "/api/v1/openapi.json" in page.text


@pytest.mark.timeout(30)
def test_since_and_until_in_seconds_are_refused_like_item_times(master: Master) -> None:
    with master.http() as http:
        for key in ("since", "until"):
            answer = http.get("/accounts/acc-1/messages", params={key: 1_763_848_020})
            assert answer.status_code == 422
            assert (
                "looks like seconds since the epoch; times are integer milliseconds"
                in (answer.json()["error"])
            )
            assert answer.json()["error"].startswith(f"query.{key}: 1763848020 looks like")
        fine = http.get("/accounts/acc-1/messages", params={"since": 1_763_848_020_000})
        assert fine.status_code == 200


@pytest.mark.timeout(30)
def test_counters_since_the_start_say_so_beside_the_stores_totals(master: Master) -> None:
    with master.http() as http:
        wait_until(lambda: http.get("/status").json()["sync"]["syncs"] > 0, 15, "a sync")
        status = http.get("/status").json()
    assert status["sync"]["since"] == status["started_at"]
    assert set(status["store"]["items"]) >= {"messages", "conversations"}
    assert status["accounts"]["running"] + status["accounts"]["starting"] >= 1


@pytest.mark.timeout(60)
def test_a_master_that_must_kill_its_workers_exits_non_zero(start_master: MasterFactory) -> None:
    accounts = [
        {
            "id": "slow",
            "platform": "testplatforms.behaviours:SlowToStop",
            "options": {"stop_delay_s": 30},
        }
    ]
    master = start_master(make_config(workers=1, accounts=accounts))
    master.wait_running("worker1")
    # Its task runs (and so takes 30 s to stop) before the first signal.
    master.log.wait_for(event="account state", account_id="slow", new="running")
    os.kill(master.pid, signal.SIGTERM)
    master.log.wait_for(event="shutting down")
    os.kill(master.pid, signal.SIGTERM)
    assert master.proc is not None
    assert master.proc.wait(20) == 3
    assert master.log.find(event="master stopped after killing its workers (a second signal)")
