"""Code changes on disk: shown as stale, loaded by a rolling reload, by a crash-respawn
and by --watch, never run half-way; a broken change leaves the old workers serving.

The platform under test lives in a temporary directory and numbers its messages on from
what the account has, writing down each one with the pid and the code version that
produced it. A message produced twice (two processes on one account) or missing from the
store (lost in a hand-over) shows up in the comparison."""

import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import MasterFactory, accounts_of, make_config
from harness import REPO, TESTS_DIR, Master, count, query, read_jsonl, wait_until

PLATFORM = """
import asyncio
import json
import os
from pathlib import Path

VERSION = "v1"


class Versioned:
    async def run(self, ctx):
        record = (Path(ctx.options["record_dir"]) / f"{ctx.account.id}.jsonl").open("a")
        n = ctx.count("message")
        while True:
            item_id = f"m{n:06d}"
            ctx.upsert_message(
                {
                    "id": item_id,
                    "conversation_id": "c1",
                    "direction": "inbound",
                    "sender_id": "u1",
                    "text": f"{VERSION} {n}",
                    "sent_at": 1_763_848_020_000 + n,
                }
            )
            record.write(json.dumps({"id": item_id, "pid": os.getpid(), "v": VERSION}) + "\\n")
            record.flush()
            n += 1
            await asyncio.sleep(0.02)
"""


class Setup:
    def __init__(self, tmp_path: Path) -> None:
        self.plugins = tmp_path / "plugins"
        self.package = self.plugins / "versioned"  # a package: --watch watches its directory
        self.package.mkdir(parents=True)
        (self.package / "__init__.py").write_text("")
        self.module = self.package / "platform.py"
        self.records = tmp_path / "records"
        self.records.mkdir()
        self.write("v1")

    def write(self, version: str, extra: str = "") -> None:
        self.module.write_text(PLATFORM.replace('VERSION = "v1"', f'VERSION = "{version}"') + extra)

    def start(
        self, start_master: MasterFactory, workers: int = 2, args: list[str] | None = None
    ) -> Master:
        accounts = accounts_of(
            "versioned.platform:Versioned", 2 * workers, record_dir=str(self.records)
        )
        env = {"PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS_DIR), str(self.plugins)])}
        return start_master(make_config(workers=workers, accounts=accounts), args, env=env)

    def records_of(self, account: str) -> list[dict[str, Any]]:
        return read_jsonl(self.records / f"{account}.jsonl")

    def check_nothing_lost_or_twice(self, master: Master, accounts: list[str]) -> None:
        """Every message produced once, by one process, and stored; none missing."""
        for account in accounts:
            produced = [r["id"] for r in self.records_of(account)]
            twice = [item for item, n in Counter(produced).items() if n > 1]
            assert not twice, f"{account}: produced more than once: {twice[:5]}"
            stored = {
                row[0]
                for row in query(master.db, "SELECT id FROM messages WHERE account_id=?", account)
            }
            assert set(produced) <= stored, f"{account}: lost {sorted(set(produced) - stored)[:5]}"
            assert stored == {f"m{n:06d}" for n in range(len(stored))}, f"{account}: a gap"


def workers_info(http: httpx.Client) -> dict[str, dict[str, Any]]:
    return {w["id"]: w for w in http.get("/workers").json()["items"]}


def versions_in_store(master: Master, account: str) -> set[str]:
    rows = query(master.db, "SELECT text FROM messages WHERE account_id=?", account)
    return {str(row[0]).split()[0] for row in rows}


def wait_for_version(master: Master, version: str, accounts: list[str]) -> None:
    """Until every one of ``accounts`` has stored a message made by ``version``."""
    for account in accounts:
        wait_until(
            lambda a=account: version in versions_in_store(master, a), 10, f"{version} on {account}"
        )


ACCOUNTS = ["acc-1", "acc-2", "acc-3", "acc-4"]


@pytest.mark.timeout(90)
def test_changed_platform_is_stale_until_reload_runs_it_and_nothing_is_lost(
    start_master: MasterFactory, tmp_path: Path
) -> None:
    setup = Setup(tmp_path)
    master = setup.start(start_master)
    pids = master.wait_all_running(["worker1", "worker2"])
    wait_until(lambda: all(count(master.db, "messages", a) > 10 for a in ACCOUNTS), 20, "syncing")
    with master.http() as http:
        before = workers_info(http)
        assert all(
            not w["stale_code"] and w["code_version"] and w["stale_files"] == []
            for w in before.values()
        )

        setup.write("v2")
        wait_until(
            lambda: all(w["stale_code"] for w in workers_info(http).values()), 10, "stale_code"
        )
        stale = workers_info(http)
        assert all(w["stale_files"] == [str(setup.module)] for w in stale.values())
        assert http.get("/status").json()["stale_workers"] == 2

        result = http.post("/reload").json()
        assert result["complete"] is True, result
        assert [s["worker"] for s in result["steps"]] == ["worker1", "worker2"]
        after = workers_info(http)
        for worker in ("worker1", "worker2"):
            assert after[worker]["pid"] != pids[worker]
            assert not after[worker]["stale_code"]
            assert after[worker]["code_version"] != before[worker]["code_version"]
    wait_for_version(master, "v2", ACCOUNTS)
    assert master.stop() == 0

    setup.check_nothing_lost_or_twice(master, ACCOUNTS)
    for account in ACCOUNTS:
        # After the hand-over, only the new code produced messages for the account.
        versions = [r["v"] for r in setup.records_of(account)]
        assert versions == sorted(versions), f"{account}: v1 after v2: {versions}"


@pytest.mark.timeout(60)
def test_a_crash_respawn_after_a_code_change_runs_the_new_code(
    start_master: MasterFactory, tmp_path: Path
) -> None:
    setup = Setup(tmp_path)
    master = setup.start(start_master)
    pids = master.wait_all_running(["worker1", "worker2"])
    template = master.log.wait_for(event="fork template ready")
    setup.write("v2")
    mark = master.mark()
    os.kill(pids["worker1"], signal.SIGKILL)

    back = master.wait_running("worker1", after=mark)
    master.log.wait_for(after=mark, event="fork template ready")
    changed = master.log.find(
        event="code changed since the template loaded it; starting a new template"
    )
    assert changed
    assert changed[0]["old_pid"] == template["pid"]
    assert any(str(setup.module) in path for path in changed[0]["changed"])
    with master.http() as http:
        info = workers_info(http)
    assert info["worker1"]["pid"] == back
    assert not info["worker1"]["stale_code"]
    assert info["worker2"]["stale_code"]  # untouched: it still runs what it loaded
    # worker1's accounts (acc-1, acc-3) now produce v2; worker2's still v1.
    wait_for_version(master, "v2", ["acc-1", "acc-3"])
    assert "v2" not in versions_in_store(master, "acc-2")
    assert master.stop() == 0
    records = setup.records_of("acc-1")
    assert {r["v"] for r in records if r["pid"] == back} == {"v2"}


@pytest.mark.timeout(90)
def test_a_reload_into_broken_code_stops_and_the_old_workers_keep_serving(
    start_master: MasterFactory, tmp_path: Path
) -> None:
    setup = Setup(tmp_path)
    master = setup.start(start_master)
    pids = master.wait_all_running(["worker1", "worker2"])
    wait_until(lambda: count(master.db, "messages", "acc-4") > 5, 20, "syncing")
    setup.write("v2", extra='\nraise RuntimeError("this version cannot be imported")\n')
    with master.http() as http:
        result = http.post("/reload").json()
        assert result["complete"] is False
        # The replacement boots (a platform that cannot load fails its accounts only),
        # but it cannot load what the old process runs: it does not take over.
        assert [s["state"] for s in result["steps"]] == ["platform_failed"]
        assert "RuntimeError: this version cannot be imported" in result["error"]
        assert "the old one keeps serving" in result["error"]
        status = http.get("/status").json()
        assert status["last_reload"]["error"] == result["error"]
        info = workers_info(http)
    assert {w: info[w]["pid"] for w in pids} == pids
    assert all(info[w]["state"] == "running" for w in pids)
    stopped = master.log.find(event="reload stopped: a replacement cannot load its platforms")
    assert stopped
    assert stopped[0]["level"] == "error"
    assert stopped[0]["left"] == ["worker2"]
    assert stopped[0]["platforms"] == ["versioned.platform:Versioned"]
    assert "this version cannot be imported" in stopped[0]["reason"]
    refused = master.log.wait_for(event="worker exited", worker="worker1", role="incoming")
    assert refused["pid"] == stopped[0]["new_pid"]
    assert refused["reason"] == "reload"
    assert not master.log.find(event="handing accounts over")
    # The new template loads in the background; its failure lands in its log soon after.
    template_log = master.state_dir / "logs" / "template.log"
    wait_until(
        lambda: "RuntimeError: this version cannot be imported" in template_log.read_text(),
        10,
        "the new template's import error in template.log",
    )
    # Still syncing, on the old code, on both workers.
    for account in ACCOUNTS:
        before = count(master.db, "messages", account)
        wait_until(
            lambda a=account, b=before: count(master.db, "messages", a) > b + 5, 20, "syncing"
        )
        assert versions_in_store(master, account) == {"v1"}
    assert master.stop() == 0
    setup.check_nothing_lost_or_twice(master, ACCOUNTS)


@pytest.mark.timeout(90)
def test_watch_reloads_after_a_saved_change(start_master: MasterFactory, tmp_path: Path) -> None:
    setup = Setup(tmp_path)
    master = setup.start(start_master, args=["--watch"])
    pids = master.wait_all_running(["worker1", "worker2"])
    master.log.wait_for(event="watching code for changes")
    mark = master.mark()
    setup.write("v2")

    changed = master.log.wait_for(after=mark, event="worker code changed; reloading")
    assert changed["files"] == [str(setup.module)]
    master.log.wait_for(after=mark, event="reload of all workers", why="--watch")
    master.log.wait_for(after=mark, event="reload complete", timeout=30)
    with master.http() as http:
        info = workers_info(http)
        assert http.get("/status").json()["last_reload"]["why"] == "--watch"
    for worker in ("worker1", "worker2"):
        assert info[worker]["pid"] != pids[worker]
        assert not info[worker]["stale_code"]
    wait_for_version(master, "v2", ACCOUNTS)

    # A file no process runs changes nothing ...
    mark = master.mark()
    (setup.package / "notes.py").write_text("x = 1\n")  # watched, but nobody imports it
    time.sleep(1.5)  # several debounce periods: a reload would have begun
    assert not [
        e for e in master.log.refresh()[mark:] if e["event"] == "worker code changed; reloading"
    ]
    # ... but a file a worker runs does, once per save.
    setup.write("v3")
    master.log.wait_for(after=mark, event="reload complete", timeout=30)
    time.sleep(1.0)
    reloads = [e for e in master.log.refresh()[mark:] if e["event"] == "reload of all workers"]
    assert len(reloads) == 1, reloads
    assert master.stop() == 0
    setup.check_nothing_lost_or_twice(master, ACCOUNTS)
