"""Accounts changed while the master runs: made, changed, disabled, deleted through the API
and hiscrmctl; the config file read again with ``update`` (accounts and workers); the
rules between accounts the file declares and accounts the API made."""

import json
import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import MasterFactory, make_config
from harness import Master, count, query, read_jsonl, to_toml, wait_until
from test_ctl import ctl

STARTS = "testplatforms.recording:Starts"


def starts(records: Path, account: str) -> list[dict[str, Any]]:
    return read_jsonl(records / f"{account}.starts")


def declared(records: Path, *ids: str, **options: Any) -> list[dict[str, Any]]:
    return [
        {
            "id": a,
            "platform": STARTS,
            "options": {"record_dir": str(records), "per_tick": 1, **options},
        }
        for a in ids
    ]


def check_nothing_lost(master: Master, records: Path, accounts: list[str]) -> None:
    for account in accounts:
        produced = {r["item"]["id"] for r in read_jsonl(records / f"{account}.jsonl")}
        stored = {
            r[0] for r in query(master.db, "SELECT id FROM messages WHERE account_id=?", account)
        }
        assert produced <= stored, f"{account} lost {sorted(produced - stored)[:5]}"


@pytest.fixture
def records(tmp_path: Path) -> Path:
    path = tmp_path / "records"
    path.mkdir()
    return path


@pytest.mark.timeout(90)
def test_accounts_made_changed_disabled_and_deleted_while_it_runs(
    start_master: MasterFactory, records: Path
) -> None:
    master = start_master(make_config(workers=2, accounts=declared(records, "cfg-1", "cfg-2")))
    pids = master.wait_all_running(["worker1", "worker2"])
    options = {"record_dir": str(records), "per_tick": 1}
    with master.http() as http:
        began = time.monotonic()
        made = http.post("/accounts", json={"id": "api-1", "platform": STARTS, "options": options})
        assert made.status_code == 201, made.text
        assert made.json()["source"] == "api"
        wait_until(lambda: http.get("/accounts/api-1").json()["state"] == "running", 5, "running")
        placed_s = time.monotonic() - began
        wait_until(lambda: count(master.db, "messages", "api-1") > 5, 10, "api-1's items stored")

        # With hiscrmctl too; options given as K=V.
        added = ctl(master, "account", "add", "api-2", "--platform", STARTS,
                    "--option", f"record_dir={records}", "--option", "per_tick=1")  # fmt: skip
        assert added.returncode == 0, added.stderr
        wait_until(lambda: count(master.db, "messages", "api-2") > 5, 10, "api-2's items stored")
        assert starts(records, "api-2")[0]["options"]["per_tick"] == 1  # a number, not text
        for args in (("add", "bad", "--option", "rate=NaN"), ("set", "api-2", "rate=1e999"),
                     ("add", "bad", "--option", "rate=[Infinity]")):  # fmt: skip
            refused = ctl(master, "account", *args)
            assert refused.returncode == 2, (args, refused.stderr)
            assert "is not a finite number" in refused.stderr, (args, refused.stderr)
            assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr  # no traceback

        # New options: its task restarts with them; no other account's task restarts.
        others = {a: len(starts(records, a)) for a in ("cfg-1", "cfg-2", "api-2")}
        changed = ctl(master, "account", "set", "api-1", "per_tick=2", "note=hello")
        assert changed.returncode == 0, changed.stderr
        wait_until(lambda: len(starts(records, "api-1")) == 2, 10, "api-1 restarted")
        assert starts(records, "api-1")[-1]["options"]["note"] == "hello"
        assert {a: len(starts(records, a)) for a in others} == others

        # Disabled: stopped, state disabled, data kept; enabled: back.
        assert ctl(master, "account", "disable", "api-1").returncode == 0
        wait_until(lambda: http.get("/accounts/api-1").json()["state"] == "disabled", 5, "off")
        stopped_at = count(master.db, "messages", "api-1")
        time.sleep(0.5)
        assert count(master.db, "messages", "api-1") == stopped_at
        assert ctl(master, "account", "enable", "api-1").returncode == 0
        wait_until(lambda: count(master.db, "messages", "api-1") > stopped_at, 10, "on again")

        # Deleted without purge: gone from the registry, data kept (and logged).
        gone = http.delete("/accounts/api-2")
        assert gone.json() == {"id": "api-2", "purged": False, "deleted": {}}
        assert http.get("/accounts/api-2").status_code == 404
        assert count(master.db, "messages", "api-2") > 0
        assert (master.state_dir / "spool" / "api-2").exists()
        logged = master.log.wait_for(event="account deleted", account_id="api-2")
        assert logged["purged"] is False
        # ... and with purge: rows and spool go.
        purged = ctl(master, "--json", "account", "rm", "api-1", "--purge")
        assert purged.returncode == 0, purged.stderr
        assert json.loads(purged.stdout)["deleted"]["messages"] > 0
        assert count(master.db, "messages", "api-1") == 0
        assert not (master.state_dir / "spool" / "api-1").exists()
        workers = {w["id"]: w["pid"] for w in http.get("/workers").json()["items"]}
    assert workers == pids  # none of it restarted a worker
    assert placed_s < 2
    assert master.stop() == 0
    check_nothing_lost(master, records, ["cfg-1", "cfg-2"])


@pytest.mark.timeout(60)
def test_bad_requests_change_nothing_and_say_what_is_wrong(
    start_master: MasterFactory, records: Path
) -> None:
    master = start_master(make_config(workers=1, accounts=declared(records, "cfg-1")))
    master.wait_running("worker1")
    with master.http() as http:
        cases = [
            ({"id": "x", "platform": "no such thing!"}, 422, "platform"),
            ({"id": "x", "platform": "nosuchmodule:Thing"}, 422, "module 'nosuchmodule' not found"),
            ({"id": "../etc", "platform": "demo"}, 422, "id"),
            ({"id": "x", "options": [1, 2]}, 422, "options"),
            ({"id": "x", "colour": "red"}, 422, "colour"),
            ({"id": "cfg-1"}, 409, "exists"),
            # Options that could never be assigned (over the pipe's frame), stored, served
            # or read back as JSON are refused whole, naming where and what.
            ({"id": "x", "options": {"pad": "y" * 1_100_000}}, 422, "options: 1,100,011 bytes"),
            ({"id": "x", "options": {"k": "\ud800"}}, 422, "options.k: a lone surrogate"),
            ({"id": "x", "options": {"a\ud800": 1}}, 422, "options: key"),
            ({"id": "x", "options": {"k": "\ud800"}, "enabled": False}, 422, "\\ud800"),
            ({"id": "x", "options": {"rate": float("nan")}}, 422, "options.rate: nan"),
            ({"id": "x", "options": {"rate": float("inf")}}, 422, "options.rate: inf"),
            ({"id": "x", "options": {"deep": deep(40)}}, 422, "nested deeper than 32"),
            ({"id": "t\ud800", "platform": "demo"}, 422, "id"),
            ({"id": "x", "extra": 1}, 422, "unknown body field 'extra'"),
        ]
        for body, status, text in cases:
            # As a client's JSON encoder sends them: \ud800 escapes, NaN and Infinity.
            content = json.dumps(body).encode()
            answer = http.post("/accounts", content=content, headers=JSON)
            assert answer.status_code == status, (str(body)[:200], answer.text[:300])
            assert text in answer.json()["error"], (str(body)[:200], answer.text[:300])
            assert len(answer.content) < 10_000  # a big input is not echoed whole
        bad_json = http.post(
            "/accounts", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert bad_json.status_code == 422
        # The file's accounts belong to the file.
        for method, path, body in (
            ("PATCH", "/accounts/cfg-1", {"enabled": False}),
            ("DELETE", "/accounts/cfg-1", None),
        ):
            refused = http.request(method, path, json=body)
            assert refused.status_code == 409, refused.text
            assert "declared in the config file" in refused.json()["error"]
        ids = [a["id"] for a in http.get("/accounts").json()["items"]]
        assert ids == ["cfg-1"]  # nothing half-made
        assert http.get("/accounts/cfg-1").json()["state"] == "running"
        # A change to such options is refused too, and changes nothing.
        made = http.post("/accounts", json={"id": "api-1", "options": {"n": 1}, "enabled": False})
        assert made.status_code == 201, made.text
        for options in ({"pad": "y" * 1_100_000}, {"k": "\ud800"}, {"r": float("nan")}):
            content = json.dumps({"options": options}).encode()
            answer = http.patch("/accounts/api-1", content=content, headers=JSON)
            assert answer.status_code == 422, answer.text[:300]
            assert answer.json()["error"].startswith("options"), answer.text[:300]
        assert http.get("/accounts/api-1").json()["options"] == {"n": 1}
        assert http.get("/accounts").status_code == 200
    assert query(master.db, "SELECT id FROM accounts ORDER BY id") == [("api-1",), ("cfg-1",)]
    assert master.stop() == 0


JSON = {"content-type": "application/json"}


def deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.timeout(60)
def test_a_stored_account_that_is_no_longer_valid_is_left_out_not_fatal(
    start_master: MasterFactory, records: Path
) -> None:
    """Rows an older version stored with options that are no longer accepted: the master
    starts, runs the others, and names each bad one in an error line."""
    master = start_master(make_config(workers=1, accounts=declared(records, "cfg-1")))
    master.wait_running("worker1")
    assert master.stop() == 0
    conn = sqlite3.connect(master.db)
    with conn:
        for account_id, options in (
            ("big", json.dumps({"pad": "y" * 1_100_000})),
            ("sur", '{"k": "\\ud800"}'),  # a JSON escape of a lone surrogate
            ("nan", '{"rate": NaN}'),
        ):
            conn.execute(
                "INSERT INTO accounts (id, platform, options, enabled, source, created_at, "
                "updated_at) VALUES (?, 'demo', ?, 1, 'api', 1, 1)",
                (account_id, options),
            )
    conn.close()
    mark = master.mark()
    master.start()
    master.wait_running("worker1", after=mark)
    for account_id, reason in (
        ("big", "options: 1,100,011 bytes of JSON"),
        ("sur", "options.k: a lone surrogate"),
        ("nan", "options.rate: nan"),
    ):
        logged = master.log.wait_for(
            after=mark, event="stored account is not valid; it is left out", account_id=account_id
        )
        assert logged["level"] == "error"
        assert logged["reason"].startswith(reason), logged
    with master.http() as http:
        answer = http.get("/accounts")
        assert answer.status_code == 200, answer.text[:300]
        assert [a["id"] for a in answer.json()["items"]] == ["cfg-1"]
        assert http.get("/accounts/cfg-1").json()["state"] == "running"
        # Made again through the API, a good one replaces the bad row.
        made = http.post("/accounts", json={"id": "sur", "options": {"k": "ok"}})
        assert made.status_code == 201, made.text
    assert master.stop() == 0


@pytest.mark.timeout(60)
def test_accounts_made_through_the_api_survive_a_restart(
    start_master: MasterFactory, records: Path
) -> None:
    master = start_master(make_config(workers=1, accounts=declared(records, "cfg-1")))
    master.wait_running("worker1")
    with master.http() as http:
        body = {
            "id": "api-1",
            "platform": STARTS,
            "options": {"record_dir": str(records), "per_tick": 1},
        }
        assert http.post("/accounts", json=body).status_code == 201
        wait_until(lambda: count(master.db, "messages", "api-1") > 5, 10, "stored")
    assert master.stop() == 0
    master.start()
    mark = master.mark()
    master.wait_running("worker1", after=mark)
    with master.http() as http:
        account = http.get("/accounts/api-1").json()
        assert account["source"] == "api"
        before = count(master.db, "messages", "api-1")
        wait_until(lambda: count(master.db, "messages", "api-1") > before, 10, "syncing again")
    assert master.stop() == 0
    check_nothing_lost(master, records, ["cfg-1", "api-1"])


@pytest.mark.timeout(120)
def test_update_applies_the_file_accounts_and_workers_moving_little(
    start_master: MasterFactory, records: Path
) -> None:
    ids = [f"acc-{n}" for n in range(1, 7)]
    config = make_config(workers=2, accounts=declared(records, *ids))
    master = start_master(config)
    pids = master.wait_all_running(["worker1", "worker2"])
    with master.http() as http:
        mine = {"id": "mine", "platform": STARTS, "options": {"record_dir": str(records)}}
        assert http.post("/accounts", json=mine).status_code == 201
        homes = {a["id"]: a["worker"] for a in http.get("/accounts").json()["items"]}

        # A bad file changes nothing and says why: it parses, declares a good new account,
        # and fails validation; the new account is not made.
        good = master.config_path.read_text()
        invalid = {**config, "workers": 0, "accounts": declared(records, *ids, "acc-new")}
        master.config_path.write_text(to_toml(invalid))
        bad = http.post("/config/update")
        assert bad.status_code == 422
        assert "nothing changed" in bad.json()["error"]
        refused = ctl(master, "update")
        assert refused.returncode == 2, refused.stderr
        assert "update refused: nothing changed" in refused.stderr
        assert "workers" in refused.stderr
        assert http.get("/accounts/acc-new").status_code == 404
        assert {a["id"] for a in http.get("/accounts").json()["items"]} == {*ids, "mine"}
        assert [w["id"] for w in http.get("/workers").json()["items"]] == ["worker1", "worker2"]
        master.config_path.write_text(good)

        # Accounts added, removed and changed; the API's account declared too (a conflict).
        changed = dict(config)
        changed["accounts"] = [
            *declared(records, "acc-1", "acc-3", "acc-4", "acc-5", "acc-6", "acc-7"),
            *declared(records, "acc-2", per_tick=2),
            *declared(records, "mine"),
        ]
        master.config_path.write_text(to_toml(changed))
        result = ctl(master, "--json", "update")
        assert result.returncode == 0, result.stderr
        answer = json.loads(result.stdout)
        assert answer["accounts"] == {
            "added": ["acc-7"], "changed": ["acc-2"], "removed": [], "conflicts": ["mine"]
        }  # fmt: skip
        wait_until(lambda: count(master.db, "messages", "acc-7") > 0, 10, "acc-7 runs")
        wait_until(lambda: len(starts(records, "acc-2")) == 2, 10, "acc-2 restarted")
        assert http.get("/accounts/mine").json()["source"] == "api"

        # Workers 2 -> 3: the untouched workers keep their pids; about a third moves.
        changed["workers"] = 3
        changed["accounts"] = [a for a in changed["accounts"] if a["id"] != "acc-6"]
        master.config_path.write_text(to_toml(changed))
        answer = http.post("/config/update").json()
        assert answer["accounts"]["removed"] == ["acc-6"]
        assert {s["key"]: s["applies"] for s in answer["settings"]} == {"workers": "now"}
        master.wait_running("worker3")
        wait_until(
            lambda: (
                len([a for a in http.get("/accounts").json()["items"] if a["worker"] == "worker3"])
                >= 2
            ),
            15,
            "worker3 takes its share",
        )
        after = {a["id"]: a["worker"] for a in http.get("/accounts").json()["items"]}
        moved = [a for a in after if a in homes and homes[a] != after[a]]
        assert len(moved) <= 3, (homes, after)  # 7 accounts: about a third
        workers = {w["id"]: w for w in http.get("/workers").json()["items"]}
        assert {w: workers[w]["pid"] for w in pids} == pids
        assert "acc-6" not in after

        # Workers 3 -> 1: only the removed workers' accounts move; then those workers go.
        changed["workers"] = 1
        master.config_path.write_text(to_toml(changed))
        assert http.post("/config/update").status_code == 200
        wait_until(
            lambda: [w["id"] for w in http.get("/workers").json()["items"]] == ["worker1"],
            30,
            "workers 2 and 3 removed",
        )
        assert http.get("/workers/worker1").json()["pid"] == pids["worker1"]
        wait_until(
            lambda: all(a["state"] == "running" for a in http.get("/accounts").json()["items"]),
            15,
            "everything running on worker1",
        )
        # A key only a restart applies is named as such.
        changed["api"] = {"port": 0, "max_page_bytes": 2**20}
        master.config_path.write_text(to_toml(changed))
        answer = http.post("/config/update").json()
        assert answer["restart_needed"] == ["api.max_page_bytes"]
    assert master.stop() == 0
    check_nothing_lost(master, records, ["acc-1", "acc-2", "acc-3", "acc-4", "acc-5", "acc-7"])


@pytest.mark.timeout(90)
def test_an_account_beyond_capacity_says_why_and_is_placed_once_there_is_room(
    start_master: MasterFactory, records: Path
) -> None:
    config = make_config(
        workers=1, accounts_per_worker=2, accounts=declared(records, "acc-1", "acc-2")
    )
    master = start_master(config)
    master.wait_running("worker1")
    full = "no capacity: 1 worker x 2 accounts_per_worker = 2, all taken"
    with master.http() as http:
        mark = master.mark()
        extra = {"id": "extra", "platform": STARTS, "options": {"record_dir": str(records)}}
        assert http.post("/accounts", json=extra).status_code == 201
        answer = http.get("/accounts/extra").json()
        assert (answer["state"], answer["reason"], answer["worker"]) == ("unassigned", full, None)
        warned = master.log.wait_for(after=mark, event="accounts left without a worker")
        assert (warned["level"], warned["accounts"], warned["reason"]) == (
            "warning",
            ["extra"],
            full,
        )
        logged = master.log.wait_for(after=mark, event="account state", account_id="extra")
        assert (logged["new"], logged["reason"]) == ("unassigned", full)
        listing = ctl(master, "accounts")
        assert listing.returncode == 0, listing.stderr
        assert f"unassigned ({full}): extra" in listing.stdout
        shown = ctl(master, "account", "show", "extra")
        assert f"why: {full}" in shown.stdout

        # Room appears (workers 1 -> 2): it is placed and runs; nothing else moves.
        config["workers"] = 2
        master.config_path.write_text(to_toml(config))
        assert ctl(master, "update").returncode == 0
        wait_until(lambda: count(master.db, "messages", "extra") > 0, 15, "extra runs")
        homes = {a["id"]: a["worker"] for a in http.get("/accounts").json()["items"]}
        assert homes == {"acc-1": "worker1", "acc-2": "worker1", "extra": "worker2"}

        # Room goes (workers 2 -> 1): worker2's account is unassigned again, and says so.
        mark = master.mark()
        config["workers"] = 1
        master.config_path.write_text(to_toml(config))
        assert ctl(master, "update").returncode == 0
        warned = master.log.wait_for(after=mark, event="accounts left without a worker")
        assert (warned["accounts"], warned["reason"]) == (["extra"], full)
        wait_until(
            lambda: http.get("/accounts/extra").json()["state"] == "unassigned", 15, "unassigned"
        )
        assert http.get("/accounts/extra").json()["reason"] == full
        wait_until(
            lambda: [w["id"] for w in http.get("/workers").json()["items"]] == ["worker1"],
            15,
            "worker2 removed once it let its account go",
        )
    assert master.stop() == 0
    check_nothing_lost(master, records, ["acc-1", "acc-2", "extra"])


@pytest.mark.timeout(90)
def test_sighup_updates_then_reloads(start_master: MasterFactory, records: Path) -> None:
    config = make_config(workers=1, accounts=declared(records, "acc-1"))
    master = start_master(config)
    pid = master.wait_running("worker1")
    config["accounts"] = declared(records, "acc-1", "acc-2")
    master.config_path.write_text(to_toml(config))
    mark = master.mark()
    os.kill(master.pid, signal.SIGHUP)
    updated = master.log.wait_for(after=mark, event="configuration updated")
    assert updated["accounts"]["added"] == ["acc-2"]
    reload = master.log.wait_for(after=mark, event="reload complete", timeout=30)
    assert master.log.events.index(updated) < master.log.events.index(reload)
    with master.http() as http:
        assert http.get("/workers/worker1").json()["pid"] != pid
        wait_until(lambda: count(master.db, "messages", "acc-2") > 0, 10, "acc-2 runs")
    assert master.stop() == 0


@pytest.mark.timeout(90)
def test_an_accounts_own_memory_limit_is_set_changed_cleared_and_kept(
    start_master_each_store: MasterFactory, records: Path
) -> None:
    """``max_memory_mb`` (the limit of the account's own worker while it is quarantined):
    made, changed and cleared through the API and hiscrmctl, declared in the file, kept
    across a restart; a bad value is a 422 naming it; changing it restarts no task."""
    config = make_config(workers=1, accounts=declared(records, "cfg-1"))
    config["accounts"][0]["max_memory_mb"] = 32
    master = start_master_each_store(config)
    master.wait_running("worker1")
    options = {"record_dir": str(records), "per_tick": 1}
    with master.http() as http:

        def limit(account_id: str) -> object:
            return http.get(f"/accounts/{account_id}").json()["max_memory_mb"]

        body = {"id": "api-1", "platform": STARTS, "options": options, "max_memory_mb": 64}
        made = http.post("/accounts", json=body)
        assert made.status_code == 201, made.text
        assert made.json()["max_memory_mb"] == 64
        wait_until(lambda: http.get("/accounts/api-1").json()["state"] == "running", 5, "running")
        wait_until(lambda: len(starts(records, "api-1")) == 1, 5, "api-1 started")
        assert limit("cfg-1") == 32

        for patch, expected in (
            ({"max_memory_mb": 128}, 128),
            ({"enabled": True}, 128),  # absent: kept
            ({"max_memory_mb": None}, None),  # null: cleared
            ({"max_memory_mb": 96}, 96),
        ):
            answer = http.patch("/accounts/api-1", json=patch)
            assert answer.status_code == 200, (patch, answer.text)
            assert answer.json()["max_memory_mb"] == expected, patch
            assert limit("api-1") == expected, patch

        for value in (8, 2**20 + 1, 0, -1, "lots", 100.5, True):
            bad = http.post("/accounts", json={"id": "bad", "max_memory_mb": value})
            assert bad.status_code == 422, (value, bad.text)
            assert "max_memory_mb" in bad.json()["error"], (value, bad.text)
            bad = http.patch("/accounts/api-1", json={"max_memory_mb": value})
            assert bad.status_code == 422, (value, bad.text)
            assert "max_memory_mb" in bad.json()["error"], (value, bad.text)
        assert http.get("/accounts/bad").status_code == 404
        assert limit("api-1") == 96
        # The file's accounts belong to the file, their limit too.
        refused = http.patch("/accounts/cfg-1", json={"max_memory_mb": 64})
        assert refused.status_code == 409, refused.text
        assert limit("cfg-1") == 32

        added = ctl(master, "--json", "account", "add", "api-2", "--platform", STARTS,
                    "--option", f"record_dir={records}", "--max-memory-mb", "48")  # fmt: skip
        assert added.returncode == 0, added.stderr
        assert json.loads(added.stdout)["max_memory_mb"] == 48
        shown = ctl(master, "account", "show", "api-2")
        assert "memory limit 48 MB" in shown.stdout, shown.stdout
        for value, expected in (("72", 72), ("none", None), ("48", 48)):
            limited = ctl(master, "--json", "account", "limit", "api-2", value)
            assert limited.returncode == 0, limited.stderr
            assert json.loads(limited.stdout)["max_memory_mb"] == expected
            assert limit("api-2") == expected
        not_a_number = ctl(master, "account", "limit", "api-2", "lots")
        assert not_a_number.returncode == 2
        assert "whole number of MB" in not_a_number.stderr + not_a_number.stdout
        too_small = ctl(master, "account", "add", "api-3", "--max-memory-mb", "4")
        assert too_small.returncode != 0
        assert "max_memory_mb" in too_small.stdout + too_small.stderr

        # The file changes its account's limit: a change, applied without a restart.
        text = master.config_path.read_text()  # as the fixture wrote it (its store too)
        assert text.count("max_memory_mb = 32") == 1
        master.config_path.write_text(text.replace("max_memory_mb = 32", "max_memory_mb = 40"))
        answer = http.post("/config/update")
        assert answer.status_code == 200, answer.text
        assert answer.json()["accounts"]["changed"] == ["cfg-1"]
        assert limit("cfg-1") == 40
        assert len(starts(records, "api-1")) == 1  # none of it restarted its task
        assert len(starts(records, "cfg-1")) == 1
    assert master.stop() == 0
    master.start()
    master.wait_running("worker1", after=master.mark())
    with master.http() as http:

        def limits() -> dict[str, object]:
            return {a["id"]: a["max_memory_mb"] for a in http.get("/accounts").json()["items"]}

        # (On PostgreSQL the accounts come with the lease keeper's first round.)
        wait_until(lambda: len(limits()) == 3, 10, "every account back")
        assert limits() == {"cfg-1": 40, "api-1": 96, "api-2": 48}
    assert master.stop() == 0
