"""``update`` and the keys only a master restart applies (``state_dir``, ``api.*``,
``store.url``, ``cluster.*``): the running master keeps their values everywhere (new
workers' logs and spools, the disk check) and says a restart is needed on every update
until one."""

import pytest
from conftest import MasterFactory, make_config
from harness import to_toml, wait_until


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
