"""``update`` and the keys only a master restart applies (``state_dir``, ``api.*``,
``store.url``, ``cluster.*``): the running master keeps their values everywhere (new
workers' logs and spools, the disk check) and says a restart is needed on every update
until one; and a config file that is empty (a save not finished) is refused."""

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MasterFactory, make_config
from harness import REPO, TESTS_DIR, to_toml, wait_until
from test_ctl import ctl


@pytest.mark.timeout(90)
def test_keys_needing_a_restart_keep_their_running_values_until_one(
    start_master: MasterFactory,
) -> None:
    config = make_config(workers=1)
    master = start_master(config)
    master.wait_running("worker1")
    elsewhere = master.dir / "nowhere"
    log_path = master.worker_log("worker1")
    master.config_path.write_text(
        to_toml({**config, "state_dir": "nowhere", "api": {"port": 3999}})
    )
    with master.http() as http:
        answer = http.post("/config/update")
        assert answer.status_code == 200, answer.text
        assert answer.json()["restart_needed"] == ["api.port", "state_dir"]

        # A worker started from now on still lives in the running state dir.
        size = log_path.stat().st_size
        restarted = http.post("/workers/worker1/restart")
        assert restarted.status_code == 200, restarted.text
        pid = restarted.json()["worker"]["pid"]
        starting = f"pid={pid} "

        def logged_start() -> bool:
            return any(
                "worker starting" in line and starting in line
                for line in log_path.read_text().splitlines()
            )

        wait_until(logged_start, 10, "the new worker logs under the running state dir")
        assert log_path.stat().st_size > size
        lines = http.get("/workers/worker1/logs", params={"tail": 200}).json()["lines"]
        assert any("worker starting" in line and starting in line for line in lines)
        assert not elsewhere.exists()
        disk = http.get("/healthz").json()["checks"]["disk"]
        assert disk["status"] == "ok", disk

        # Asked again, the master still says what only a restart applies.
        again = http.post("/config/update").json()
        assert again["restart_needed"] == ["api.port", "state_dir"]
        assert {s["key"] for s in again["settings"]} == {"api.port", "state_dir"}
        assert not elsewhere.exists()
    assert master.stop() == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("text", ["", "  \n\n# being written\n\t\n"])
def test_an_empty_config_file_is_refused_by_update(start_master: MasterFactory, text: str) -> None:
    master = start_master(make_config(workers=1))
    master.wait_running("worker1")
    with master.http() as http:
        before = {a["id"] for a in http.get("/accounts").json()["items"]}
        assert before == {"acc-1", "acc-2"}
        master.config_path.write_text(text)
        refused = http.post("/config/update")
        assert refused.status_code == 422
        error = refused.json()["error"]
        assert f"{master.config_path}: the file is empty" in error
        assert "nothing changed" in error
        by_ctl = ctl(master, "update")
        assert by_ctl.returncode == 2, by_ctl.stderr
        assert "the file is empty" in by_ctl.stderr
        assert {a["id"] for a in http.get("/accounts").json()["items"]} == before
        assert all(a["enabled"] for a in http.get("/accounts").json()["items"])
    assert master.stop() == 0


@pytest.mark.timeout(30)
def test_a_master_named_an_empty_config_file_does_not_start(tmp_path: Path) -> None:
    path = tmp_path / "hiscrm.toml"
    path.write_text("# nothing yet\n")
    env = {"PYTHONPATH": f"{REPO}:{TESTS_DIR}", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "hiscrm.master", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=20,
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [f"hiscrm: config error: {path}: the file is empty"]
    assert not (tmp_path / "var").exists()
    assert done.stdout == ""
