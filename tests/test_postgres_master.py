"""A real master on PostgreSQL: the embedded demo configuration with ``[store] url``;
what the workers find reaches the database, and the API serves it from there."""

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import MasterFactory
from harness import FAST_SUPERVISION, wait_until
from pg_server import PASSWORD

from hiscrm.exit_codes import ExitCode

pytestmark = pytest.mark.postgres


def demo_config_on(url: str) -> dict[str, Any]:
    """The embedded default, on a free port, with quick supervision, storing in ``url``."""
    text = resources.files("hiscrm").joinpath("default.toml").read_text(encoding="utf-8")
    config = tomllib.loads(text)
    config["api"]["port"] = 0
    config["supervision"] = {**config["supervision"], **FAST_SUPERVISION}
    config["store"] = {"url": url}
    for account in config["accounts"]:
        account["options"]["rate"] = 20.0
    return config


def message_ids(url: str, account_id: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT id FROM messages WHERE account_id = %s", (account_id,))
        return {r[0] for r in rows}


@pytest.mark.timeout(90)
def test_a_master_on_postgres_stores_there_and_serves_from_there(
    start_master: MasterFactory, pg_url: str
) -> None:
    master = start_master(demo_config_on(pg_url))
    opened = master.log.wait_for(20, event="store opened")
    assert opened["url"].startswith("postgresql://hiscrm:***@127.0.0.1:")
    wait_until(lambda: len(message_ids(pg_url, "demo-1")) >= 3, 30, "messages in PostgreSQL")

    with master.http() as http:
        before = message_ids(pg_url, "demo-1")
        page = http.get("/accounts/demo-1/messages", params={"limit": 500, "order": "asc"})
        assert page.status_code == 200, page.text
        served = {item["id"] for item in page.json()["items"]}
        after = message_ids(pg_url, "demo-1")
        assert before <= served <= after
        assert page.json()["total"] >= len(before)

        first = page.json()["items"][0]
        marked = http.post(f"/accounts/demo-1/messages/{first['id']}/read")
        assert marked.status_code == 200, marked.text
        assert marked.json()["is_read"] is True
        with psycopg.connect(pg_url) as conn:
            row = conn.execute(
                "SELECT is_read FROM messages WHERE account_id = 'demo-1' AND id = %s",
                (first["id"],),
            ).fetchone()
        assert row == (True,)

        counted = len(message_ids(pg_url, "demo-1"))

        def status_has_counted() -> bool:
            store = http.get("/status").json()["store"]
            return bool(store["items"]["messages"] >= counted)

        wait_until(status_has_counted, 10, "status totals from PostgreSQL")
        status = http.get("/status").json()
        assert status["store"]["path"] == opened["url"]
        assert status["store"]["errors"] == 0
        assert status["store"]["commits"] > 0
        account = http.get("/accounts/demo-1").json()
        assert account["counts"]["messages"] >= counted
        store_health = http.get("/healthz").json()["checks"]["store"]
        assert store_health["status"] == "ok", store_health

    assert not master.db.exists()  # no SQLite file beside it
    assert master.stop() == 0
    logs = [*master.state_dir.joinpath("logs").iterdir(), Path(master.stdout_path)]
    leaked = [p.name for p in logs if PASSWORD in p.read_text(errors="replace")]
    assert not leaked, f"the database password appears in {leaked}"


@pytest.mark.timeout(60)
def test_a_master_whose_database_refuses_it_stops_at_once_with_one_line(
    start_master: MasterFactory, pg_url: str
) -> None:
    master = start_master(demo_config_on(pg_url.replace(PASSWORD, "wrong-password")))
    assert master.proc is not None
    assert master.proc.wait(30) == ExitCode.CRASHED
    failed = master.log.wait_for(5, event="master cannot start")
    assert failed["error"].startswith("cannot use the store postgresql://hiscrm:***@")
    assert "password authentication failed" in failed["error"]
    lines = [line for line in master.output().splitlines() if line.startswith("hiscrm:")]
    assert lines == [f"hiscrm: {failed['error']}"]
    assert "Traceback" not in master.output()
    assert "wrong-password" not in master.output()
    assert "wrong-password" not in (master.state_dir / "logs" / "master.log").read_text()
