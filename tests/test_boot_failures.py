"""A worker that fails at boot says why in its status (``last_exit``), whatever failed:
here, a log file it cannot open, for spawned and forked workers alike."""

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import MasterFactory, accounts_of, make_config
from harness import Master, wait_until


def break_log(path: Path, how: str) -> str:
    """Make ``path`` impossible to open for appending; the error text a worker gets."""
    path.unlink()
    if how == "directory":
        path.mkdir()
        (path / "something").write_text("")
        return "Is a directory"
    os.symlink(path.parent / "missing-dir" / "w.log", path)  # dangling, into nowhere
    return "No such file or directory"


def repair_log(path: Path) -> None:
    if path.is_symlink():
        path.unlink()
    else:
        shutil.rmtree(path)


def worker_info(master: Master) -> dict[str, Any]:
    with master.http() as http:
        info: dict[str, Any] = http.get("/workers/worker1").json()
    return info


@pytest.mark.timeout(90)
@pytest.mark.parametrize("how", ["directory", "dangling symlink"])
@pytest.mark.parametrize("fork_template", [True, False], ids=["forked", "spawned"])
def test_a_log_file_that_cannot_be_opened_is_named_in_the_status(
    start_master: MasterFactory, how: str, fork_template: bool
) -> None:
    config = make_config(
        workers=1,
        accounts=accounts_of("testplatforms.behaviours:Idle"),
        supervision={"fork_template": fork_template, "backoff_initial_s": 0.5},
    )
    master = start_master(config)
    master.wait_running("worker1")
    with master.http() as http:
        assert http.post("/workers/worker1/stop").status_code == 200
    log_path = master.worker_log("worker1")
    error = break_log(log_path, how)

    mark = master.mark()
    with master.http() as http:
        started = http.post("/workers/worker1/start").json()
    assert started["worker"]["state"] == "boot_failed", started
    info = worker_info(master)
    assert info["state"] == "boot_failed"
    last = info["last_exit"]
    assert last["code"] == 73
    assert last["reason"] == "boot_failed"
    assert "could not open its log file" in last["detail"]
    cause = last["log_tail"][-1]
    assert f"cannot open its log file {log_path}" in cause
    assert error in cause
    assert "could not import" not in last["detail"]
    exited = master.log.wait_for(after=mark, event="worker exited", worker="worker1")
    assert exited["code"] == 73
    assert error in exited["log_tail"][-1]

    # Repaired, the worker starts at its next retry, and the old cause is gone.
    repair_log(log_path)
    master.wait_running("worker1", after=mark, timeout=20)
    assert not (log_path.parent / "worker1.log.boot-error").exists()
    info = worker_info(master)
    assert info["state"] == "running"
    assert not any("cannot open its log file" in line for line in log_tail_now(master))
    assert master.stop() == 0


def log_tail_now(master: Master) -> list[str]:
    with master.http() as http:
        lines: list[str] = http.get("/workers/worker1/logs", params={"tail": 20}).json()["lines"]
    return lines


@pytest.mark.timeout(60)
def test_a_log_directory_without_room_for_the_cause_still_names_it(
    start_master: MasterFactory, tmp_path: Path
) -> None:
    """Not even the boot-error file can be written (its name is taken by a directory):
    the exit code still names the log file, and stderr gets the whole story."""
    config = make_config(
        workers=1,
        accounts=accounts_of("testplatforms.behaviours:Idle"),
        supervision={"fork_template": False},
    )
    master = start_master(config)
    master.wait_running("worker1")
    with master.http() as http:
        assert http.post("/workers/worker1/stop").status_code == 200
    log_path = master.worker_log("worker1")
    break_log(log_path, "directory")
    (log_path.parent / "worker1.log.boot-error").mkdir()
    with master.http() as http:
        started = http.post("/workers/worker1/start").json()
    last = started["worker"]["last_exit"]
    assert last["code"] == 73
    assert "could not open its log file" in last["detail"]
    assert any("Is a directory" in line for line in last["log_tail"])
    # A spawned worker's stderr is the master's.
    wait_until(lambda: "cannot write" in master.output(), 5, "the cause on stderr")
    assert f"cannot open its log file {log_path}" in master.output()
    assert master.stop() == 0
