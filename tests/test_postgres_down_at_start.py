"""A master started while its PostgreSQL cannot be reached: it starts anyway, says why in
``/healthz`` (failing) and once in its log, answers reads with 503 naming the store, and
runs no account (it can lease none); once the server is reached it migrates, declares
its accounts, claims them, and what its workers find is stored."""

import time
from pathlib import Path

import psycopg
import pytest
from conftest import MasterFactory
from harness import wait_until
from pg_server import PASSWORD, PostgresServer, free_port
from tcp_proxy import TcpProxy
from test_cluster import cluster_config, leases, serving

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]

ACCOUNTS = {"acc-01", "acc-02"}


def stored_accounts(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {r[0] for r in conn.execute("SELECT DISTINCT account_id FROM messages")}


def test_a_master_started_while_postgres_is_out_of_reach_waits_for_it(
    start_master: MasterFactory, pg_url: str, pg_server: PostgresServer, tmp_path: Path
) -> None:
    record_dir = tmp_path / "runs"
    record_dir.mkdir()
    port = free_port()  # nothing listens there: the master's connections are refused
    config = cluster_config(pg_url.replace(f":{pg_server.port}/", f":{port}/"), record_dir, "n1")
    config["accounts"] = [a for a in config["accounts"] if a["id"] in ACCOUNTS]
    config.update(workers=1, accounts_per_worker=4)
    master = start_master(config, env={"HISCRM_TEST_NODE": "n1"})
    proxy: TcpProxy | None = None
    try:
        master.log.wait_for(20, event="API listening")
        with master.http() as http:
            wait_until(lambda: http.get("/healthz").status_code == 503, 20, "/healthz failing")

            def store_detail() -> str:
                return str(http.get("/healthz").json()["checks"]["store"]["detail"])

            # A few tries fail (the backoff reaches its cap), said once in the log.
            wait_until(lambda: "(4 tries)" in store_detail(), 20, "four tries")
            detail = store_detail()
            assert detail.startswith(
                f"the store cannot commit: cannot reach postgresql://hiscrm:***@127.0.0.1:{port}/"
            ), detail
            assert "Connection refused" in detail
            assert "retrying every 2 s" in detail
            assert http.get("/healthz").json()["checks"]["store"]["status"] == "failing"
            status = http.get("/status")
            assert status.status_code == 503, status.text
            assert "cannot reach postgresql://" in status.json()["error"]
            said = [
                e for e in master.log.refresh() if e["event"].startswith("cannot reach the store")
            ]
            assert len(said) == 1, said
            assert said[0]["reach"] == "transient"
            assert not serving(record_dir)  # no account ran: none could be leased
            assert master.proc is not None
            assert master.proc.poll() is None

            proxy = TcpProxy(pg_server.port, port=port)  # the server can be reached now
            back = master.log.wait_for(15, event="store reachable again")
            assert back["tries"] >= 4
            wait_until(lambda: set(leases(pg_url)) == ACCOUNTS, 30, "n1 leases its accounts")
            wait_until(lambda: stored_accounts(pg_url) == ACCOUNTS, 30, "items stored")
            wait_until(lambda: http.get("/healthz").status_code == 200, 20, "/healthz ok")
            assert http.get("/status").status_code == 200
            page = http.get("/accounts/acc-01/messages")
            assert page.status_code == 200, page.text
            assert page.json()["total"] >= 1
        assert set(serving(record_dir, time.time() - 30)) == ACCOUNTS
        assert master.stop(30) == 0
        log_text = (master.state_dir / "logs" / "master.log").read_text()
        assert PASSWORD not in log_text
    finally:
        if proxy is not None:
            proxy.close()
