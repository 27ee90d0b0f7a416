"""The memory limit (``[supervision] max_memory_mb``): a worker whose whole process tree
grows over it is restarted gracefully with reason ``memory_limit``, visible like every
other restart; the others are untouched. (The decision itself: ``test_memory_watch.py``.)"""

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from conftest import MasterFactory, make_config
from harness import Master, gone, metric, to_toml, wait_until

LIMIT_MB = 120
MiB = 2**20
DEMO = [
    {"id": "demo-a", "platform": "demo", "options": {"rate": 5.0, "seed": 1}},
    {"id": "demo-b", "platform": "demo", "options": {"rate": 5.0, "seed": 2}},
]


def start_with_a_hog(start_master: MasterFactory, hog: dict[str, Any]) -> Master:
    config = make_config(workers=2, accounts=[hog, *DEMO], supervision={"max_memory_mb": LIMIT_MB})
    master = start_master(config)
    master.wait_all_running(["worker1", "worker2"])
    return master


def restarted_for_memory(master: Master, hog_id: str) -> tuple[str, dict[str, Any]]:
    """Wait for the hog's worker to be restarted for its memory; that worker's id and the
    other worker as it was before."""
    with master.http() as http:
        wait_until(lambda: http.get(f"/accounts/{hog_id}").json()["worker"], 20, "hog placed")
        worker = http.get(f"/accounts/{hog_id}").json()["worker"]
        other_id = "worker2" if worker == "worker1" else "worker1"
        other = http.get(f"/workers/{other_id}").json()
    over = master.log.wait_for(
        event="worker over its memory limit; restarting it gracefully", worker=worker, timeout=30
    )
    assert over["tree_memory_mb"] > LIMIT_MB
    assert over["max_memory_mb"] == LIMIT_MB
    assert over["kind"] == "pss"
    assert over["tree_rss_mb"] >= over["tree_memory_mb"]
    assert over["level"] == "warning"
    exited = master.log.wait_for(event="worker exited", worker=worker, reason="memory_limit")
    assert exited["pid"] == over["pid"]
    assert exited["signal"] is None, exited  # it went when asked: a graceful stop
    return worker, other


@pytest.mark.timeout(90)
def test_a_worker_over_its_memory_limit_is_restarted_and_the_other_is_untouched(
    start_master: MasterFactory,
) -> None:
    hog = {
        "id": "hog",
        "platform": "testplatforms.behaviours:Hog",
        "options": {"step_mb": 20, "every_s": 0.2, "max_mb": 300},
    }
    master = start_with_a_hog(start_master, hog)
    worker, other = restarted_for_memory(master, "hog")
    with master.http() as http:

        def view() -> dict[str, Any]:
            return http.get(f"/workers/{worker}").json()

        wait_until(lambda: view()["restarts_by_reason"].get("memory_limit", 0) >= 1, 20, "restart")
        info = view()
        assert info["last_exit"]["reason"] == "memory_limit"
        assert "memory_limit" in info["last_exit"]["detail"]
        assert info["max_memory_bytes"] == LIMIT_MB * MiB
        text = http.get("/metrics").text
        key = f'hiscrm_worker_restarts_total{{reason="memory_limit",worker="{worker}"}}'
        assert metric(text, key) >= 1

        # The other worker: same process, never restarted, measured and within the limit.
        now = http.get(f"/workers/{other['id']}").json()
        assert now["pid"] == other["pid"]
        assert now["restarts"] == 0
        wait_until(
            lambda: http.get(f"/workers/{other['id']}").json()["tree_memory_bytes"] is not None,
            10,
            "the other worker measured",
        )
        now = http.get(f"/workers/{other['id']}").json()
        assert now["tree_memory_kind"] == "pss"
        assert 0 < now["tree_memory_bytes"] <= now["tree_rss_bytes"]
        assert now["tree_memory_bytes"] < LIMIT_MB * MiB
        assert now["tree_processes"] == 1
        assert now["tree_memory_at"] > 0
        labels = f'{{worker="{other["id"]}"}}'
        assert metric(text, f"hiscrm_worker_tree_memory_bytes{labels}") > 0
        assert metric(text, f"hiscrm_worker_tree_rss_bytes{labels}") > 0
        assert metric(text, f"hiscrm_worker_max_memory_bytes{labels}") == LIMIT_MB * MiB
        assert metric(text, "hiscrm_memory_watch_passes_total") >= 1
    assert master.stop() == 0


@pytest.mark.timeout(90)
def test_a_child_process_of_the_platform_counts_towards_the_limit(
    start_master: MasterFactory, tmp_path: Path
) -> None:
    pid_file = tmp_path / "children"
    hog = {
        "id": "child-hog",
        "platform": "testplatforms.behaviours:ChildHog",
        "options": {"step_mb": 20, "every_s": 0.2, "max_mb": 300, "pid_file": str(pid_file)},
    }
    master = start_with_a_hog(start_master, hog)
    _worker, other = restarted_for_memory(master, "child-hog")
    over = master.log.find(event="worker over its memory limit; restarting it gracefully")[0]
    assert over["processes"] >= 2  # the worker and its child
    first_child = int(pid_file.read_text().split()[0])
    wait_until(lambda: gone(first_child), 10, "the first child gone with its worker")
    with master.http() as http:
        assert http.get(f"/workers/{other['id']}").json()["pid"] == other["pid"]
        assert http.get(f"/workers/{other['id']}").json()["restarts"] == 0
    assert master.stop() == 0


@pytest.mark.timeout(60)
def test_without_a_limit_the_trees_are_measured_and_nothing_restarts(
    start_master: MasterFactory, tmp_path: Path
) -> None:
    pid_file = tmp_path / "children"
    hog = {
        "id": "child-hog",
        "platform": "testplatforms.behaviours:ChildHog",
        "options": {"step_mb": 20, "every_s": 0.1, "max_mb": 60, "pid_file": str(pid_file)},
    }
    master = start_master(make_config(workers=1, accounts=[hog]))
    master.wait_all_running(["worker1"])
    with master.http() as http:

        def view() -> dict[str, Any]:
            return http.get("/workers/worker1").json()

        wait_until(
            lambda: (view()["tree_processes"] or 0) >= 2 and view()["tree_memory_bytes"] > 60 * MiB,
            20,
            "the child's memory in the tree's figure",
        )
        info = view()
        assert info["max_memory_bytes"] is None
        assert info["restarts"] == 0
        assert "hiscrm_worker_max_memory_bytes{" not in http.get("/metrics").text
    assert master.stop() == 0


@pytest.mark.timeout(120)
def test_an_account_that_keeps_growing_over_the_limit_is_quarantined_and_runs_alone(
    start_master: MasterFactory,
) -> None:
    hog = {
        "id": "hog",
        "platform": "testplatforms.behaviours:Hog",
        "options": {"step_mb": 40, "every_s": 0.1, "max_mb": 300},
    }
    master = start_with_a_hog(start_master, hog)
    with master.http() as http:

        def account(account_id: str) -> dict[str, Any]:
            return http.get(f"/accounts/{account_id}").json()

        wait_until(lambda: account("hog")["state"] == "quarantined", 90, "hog quarantined")
        assert account("hog")["home"] == "solo-hog"
        # Alone, it grows over the same limit again: its solo worker is restarted for it.
        wait_until(
            lambda: (
                http.get("/workers/solo-hog").json()["restarts_by_reason"].get("memory_limit", 0)
                >= 1
            ),
            30,
            "the solo worker restarted for its memory",
        )
        assert account("demo-a")["state"] == "running"
        assert not account("demo-a")["quarantined"]
    assert master.stop() == 0


@pytest.mark.timeout(90)
def test_a_limit_set_by_update_applies_to_the_running_workers(start_master: MasterFactory) -> None:
    hog = {
        "id": "hog",
        "platform": "testplatforms.behaviours:Hog",
        "options": {"step_mb": 20, "every_s": 0.1, "max_mb": 200},
    }
    config = make_config(workers=2, accounts=[hog, *DEMO])
    master = start_master(config)
    pids = master.wait_all_running(["worker1", "worker2"])
    with master.http() as http:
        wait_until(lambda: http.get("/accounts/hog").json()["worker"], 20, "hog placed")
        worker = http.get("/accounts/hog").json()["worker"]
        wait_until(
            lambda: (http.get(f"/workers/{worker}").json()["tree_memory_bytes"] or 0) > 150 * MiB,
            20,
            "the hog has grown, with no limit to stop it",
        )
        assert http.get(f"/workers/{worker}").json()["pid"] == pids[worker]

        config["supervision"] = {**config["supervision"], "max_memory_mb": LIMIT_MB}
        master.config_path.write_text(to_toml(config))
        answer = http.post("/config/update")
        assert answer.status_code == 200, answer.text
        settings = {s["key"]: s["applies"] for s in answer.json()["settings"]}
        assert settings == {"supervision.max_memory_mb": "now"}
        master.log.wait_for(
            event="worker over its memory limit; restarting it gracefully", worker=worker
        )
        wait_until(
            lambda: http.get(f"/workers/{worker}").json()["restarts_by_reason"].get("memory_limit"),
            20,
            "restarted for its memory",
        )
        assert http.get(f"/workers/{worker}").json()["max_memory_bytes"] == LIMIT_MB * MiB
    assert master.stop() == 0


@pytest.mark.timeout(90)
def test_a_quarantined_account_alone_is_held_to_its_own_limit(
    start_master: MasterFactory,
) -> None:
    """Only the account has a limit (``max_memory_mb`` of its own; none for the workers):
    while it shares worker1, nothing restarts that worker for its memory; quarantined (the
    test's SIGKILLs stand in for the OOM killer), it runs alone in ``solo-hog``, which
    takes the account's limit and is restarted gracefully at it."""
    own_mb = 80
    hog = {
        "id": "hog",
        "platform": "testplatforms.behaviours:Hog",
        "options": {"step_mb": 20, "every_s": 0.2, "max_mb": 200},
        "max_memory_mb": own_mb,
    }
    master = start_master(make_config(workers=1, accounts=[hog], quarantine={"deaths": 2}))
    master.wait_running("worker1")
    killed: list[int] = []
    with master.http() as http:

        def account() -> dict[str, Any]:
            return http.get("/accounts/hog").json()

        def worker(worker_id: str) -> dict[str, Any]:
            return http.get(f"/workers/{worker_id}").json()

        assert account()["max_memory_mb"] == own_mb
        for _ in range(2):  # two deaths of its worker while it runs there: quarantined
            wait_until(
                lambda: (
                    account()["state"] == "running"
                    and account()["worker"] == "worker1"
                    and worker("worker1")["pid"] not in (None, *killed)
                ),
                20,
                "hog running on a new worker1",
            )
            assert worker("worker1")["max_memory_bytes"] is None  # shared: the workers' (none)
            killed.append(worker("worker1")["pid"])
            os.kill(killed[-1], signal.SIGKILL)
        wait_until(lambda: account()["state"] == "quarantined", 20, "hog quarantined")
        assert account()["home"] == "solo-hog"
        wait_until(lambda: http.get("/workers/solo-hog").status_code == 200, 10, "solo-hog")
        assert worker("solo-hog")["max_memory_bytes"] == own_mb * MiB

        over = master.log.wait_for(
            event="worker over its memory limit; restarting it gracefully",
            worker="solo-hog",
            timeout=30,
        )
        assert over["max_memory_mb"] == own_mb
        assert over["tree_memory_mb"] > own_mb
        exited = master.log.wait_for(
            event="worker exited", worker="solo-hog", reason="memory_limit"
        )
        assert exited["pid"] == over["pid"]
        assert exited["signal"] is None, exited  # it went when asked: a graceful stop
        wait_until(
            lambda: worker("solo-hog")["restarts_by_reason"].get("memory_limit", 0) >= 1,
            10,
            "the restart counted",
        )
        assert worker("worker1")["restarts_by_reason"].get("memory_limit", 0) == 0
    assert master.stop() == 0
