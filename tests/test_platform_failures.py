"""A platform that cannot load (not found, raising at import, not a platform class, a class
that raises when constructed) fails its own accounts only: they are ``failed`` with the
traceback's end, while the worker boots and serves the accounts of other platforms. A
fix on disk and a reload bring them back. Plugins are also found beside the config file,
wherever the master was started from."""

from pathlib import Path
from typing import Any

import pytest
from conftest import MasterFactory, make_config
from harness import Master, count, metric, wait_until

MISSING = "testplatforms.no_such_module:Nothing"
RAISES_AT_IMPORT = "testplatforms.bad_import:Never"
NO_RUN = "testplatforms.failing:NoRun"
BROKEN_INIT = "testplatforms.failing:BrokenInit"

# platform -> what its accounts' `failed` ends with, and what else it holds
CASES = {
    MISSING: (
        f"platform '{MISSING}' cannot be loaded: no module named 'testplatforms.no_such_module'",
        "ModuleNotFoundError: No module named 'testplatforms.no_such_module'",
    ),
    RAISES_AT_IMPORT: (
        f"platform '{RAISES_AT_IMPORT}' cannot be loaded: "
        "RuntimeError: boom at import: this platform module is broken",
        'bad_import.py", line 3, in <module>',
    ),
    NO_RUN: (
        f"platform '{NO_RUN}' cannot be loaded: NoRun has no 'async def run(self, ctx)'",
        "PlatformLoadError",
    ),
    BROKEN_INIT: (
        f"platform '{BROKEN_INIT}' cannot be constructed: "
        "RuntimeError: BrokenInit cannot be constructed",
        'failing.py", line ',
    ),
}
DEMO = {"platform": "demo", "options": {"rate": 20.0}}


def accounts_beside_demo(platform: str) -> list[dict[str, Any]]:
    return [
        {"id": "demo-1", **DEMO},
        {"id": "bad-1", "platform": platform},
        {"id": "demo-2", **DEMO},
        {"id": "bad-2", "platform": platform},
    ]


def account(master: Master, account_id: str) -> dict[str, Any]:
    with master.http() as http:
        info: dict[str, Any] = http.get(f"/accounts/{account_id}").json()
    return info


def syncing(master: Master, accounts: list[str], more_than: int = 5) -> None:
    for account_id in accounts:
        wait_until(
            lambda a=account_id: count(master.db, "messages", a) > more_than,
            20,
            f"{account_id} syncing",
        )


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("platform", "fork_template"),
    [
        (MISSING, True),
        (MISSING, False),
        (RAISES_AT_IMPORT, True),
        (RAISES_AT_IMPORT, False),
        (NO_RUN, True),
        (BROKEN_INIT, True),
    ],
    ids=["missing", "missing-spawned", "raises", "raises-spawned", "no-run", "broken-init"],
)
def test_a_platform_that_cannot_load_fails_its_accounts_only(
    start_master: MasterFactory, platform: str, fork_template: bool
) -> None:
    last_line, also = CASES[platform]
    config = make_config(
        workers=1,
        accounts=accounts_beside_demo(platform),
        supervision={"fork_template": fork_template},
    )
    master = start_master(config)
    pid = master.wait_running("worker1")
    for account_id in ("bad-1", "bad-2"):
        master.log.wait_for(event="account state", account_id=account_id, new="failed")
    syncing(master, ["demo-1", "demo-2"])

    for account_id in ("bad-1", "bad-2"):
        info = account(master, account_id)
        assert info["state"] == "failed"
        assert info["worker"] == "worker1"
        failed = info["failed"]
        assert failed.splitlines()[-1] == last_line
        assert "Traceback (most recent call last)" in failed
        assert also in failed
        assert info["reason"] == last_line
        assert info["task_restarts"] == 0
        assert info["errors_total"] == 1  # an error like any other: counted, and the last
        assert info["last_error"]["message"]
        assert "Traceback (most recent call last)" in info["last_error"]["traceback"]
    for account_id in ("demo-1", "demo-2"):
        assert account(master, account_id)["state"] == "running"

    with master.http() as http:
        worker = http.get("/workers/worker1").json()
        health = http.get("/healthz")
        metrics = http.get("/metrics").text
    for account_id in ("bad-1", "bad-2"):
        assert metric(metrics, f'hiscrm_account_state{{account="{account_id}",state="failed"}}')
    assert (worker["state"], worker["pid"]) == ("running", pid)
    assert health.status_code == 200
    assert health.json()["status"] == "degraded"
    checks = health.json()["checks"]
    assert f"bad-1 ({last_line})" in checks["accounts"]["detail"]
    if platform == MISSING:  # the master's own check at start names it as well
        assert platform in checks["platforms"]["detail"]

    # In the worker's log: the traceback (once), and each account that cannot run.
    text = master.worker_log("worker1").read_text()
    assert "Traceback (most recent call last)" in text
    assert also in text
    for account_id in ("bad-1", "bad-2"):
        assert f"account cannot run: its platform failed account_id={account_id}" in text

    # Not run again, not restarted: time passes (the demo accounts sync on) and nothing
    # about the bad accounts changes, and the worker never restarted.
    now = count(master.db, "messages", "demo-1")
    syncing(master, ["demo-1"], more_than=now + 40)
    for account_id in ("bad-1", "bad-2"):
        info = account(master, account_id)
        assert (info["state"], info["task_restarts"], info["errors_total"]) == ("failed", 0, 1)
        events = master.log.find(event="account state", account_id=account_id, new="failed")
        assert len(events) == 1
    assert not master.log.find(event="worker exited")
    if fork_template:  # the template loaded the others and forked the worker all the same
        assert master.log.find(event="fork template ready")
        assert not master.log.find(
            event="fork template could not load the worker code; workers start by spawn meanwhile"
        )
    assert master.stop() == 0


PLUGIN_V1 = """
import asyncio

class Plugin:
    async def run(self, ctx):
        n = ctx.count("message")
        while True:
            ctx.upsert_message({"id": f"m{n}", "conversation_id": "c", "direction": "inbound",
                                "sender_id": "u", "text": "VERSION", "sent_at": 1763848020000 + n})
            n += 1
            await asyncio.sleep(0.02)
"""


@pytest.mark.timeout(60)
def test_a_plugin_beside_the_config_file_is_found_from_any_working_directory(
    start_master: MasterFactory, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    config = make_config(
        workers=1, accounts=[{"id": "acc-1", "platform": "beside_config_platform:Plugin"}]
    )
    plugin = {"beside_config_platform.py": PLUGIN_V1.replace("VERSION", "v1")}
    master = start_master(config, cwd=elsewhere, files=plugin)
    # Found only through the config file's directory: not the master's working directory,
    # not on PYTHONPATH.
    assert master.config_path.parent == master.dir != elsewhere
    syncing(master, ["acc-1"])
    assert account(master, "acc-1")["state"] == "running"
    with master.http() as http:
        checks = http.get("/healthz").json()["checks"]
    assert checks["platforms"]["status"] == "ok"
    assert master.stop() == 0


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("broken", "how"),
    [("raises", "reload"), ("missing", "reload"), ("raises", "watch")],
    ids=["raises-reload", "missing-reload", "raises-watch"],
)
def test_a_fixed_platform_comes_back_with_a_reload(
    start_master: MasterFactory, tmp_path: Path, broken: str, how: str
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    config = make_config(
        workers=1,
        accounts=[
            {"id": "demo-1", **DEMO},
            {"id": "healed", "platform": "healing_platform:Plugin"},
        ],
    )
    # The plugin lives beside the config file, found through it only.
    files = {"healing_platform.py": 'raise ImportError("version 1 is broken")\n'}
    master = start_master(
        config,
        extra_args=["--watch"] if how == "watch" else [],
        cwd=elsewhere,
        files=files if broken == "raises" else {},
    )
    plugin = master.dir / "healing_platform.py"
    master.wait_running("worker1")
    failed = master.log.wait_for(event="account state", account_id="healed", new="failed")
    assert "healing_platform" in failed["reason"]
    syncing(master, ["demo-1"])

    mark = master.mark()
    plugin.write_text(PLUGIN_V1.replace("VERSION", "v2"))
    if how == "reload":
        with master.http() as http:
            result = http.post("/reload").json()
        assert result["complete"], result
    master.log.wait_for(after=mark, event="account state", account_id="healed", new="running")
    syncing(master, ["healed"])
    info = account(master, "healed")
    assert info["state"] == "running"
    assert info["failed"] is None
    assert master.stop() == 0


@pytest.mark.timeout(60)
def test_an_account_added_with_a_platform_its_worker_did_not_load(
    start_master: MasterFactory,
) -> None:
    master = start_master(make_config(workers=1, accounts=[{"id": "demo-1", **DEMO}]))
    pid = master.wait_running("worker1")
    big = {"id": "new-1", "platform": "testplatforms.behaviours:BigItems"}
    with master.http() as http:
        answer = http.post("/accounts", json={**big, "options": {"size": 10, "count": 20}})
        assert answer.status_code == 201, answer.text
        answer = http.post("/accounts", json={"id": "new-bad", "platform": RAISES_AT_IMPORT})
        assert answer.status_code == 201, answer.text
    # Imported at its first assignment: the account runs, or fails with the traceback.
    syncing(master, ["new-1"], more_than=10)
    assert account(master, "new-1")["state"] == "running"
    master.log.wait_for(event="account state", account_id="new-bad", new="failed")
    info = account(master, "new-bad")
    assert info["failed"].splitlines()[-1] == CASES[RAISES_AT_IMPORT][0]
    with master.http() as http:
        worker = http.get("/workers/worker1").json()
    assert (worker["state"], worker["pid"]) == ("running", pid)
    assert (
        "importing a platform at its first assignment" in master.worker_log("worker1").read_text()
    )
    assert master.stop() == 0
