"""Workers forked from the warm template: what they must not inherit, what they share,
and what happens when the template itself dies."""

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from conftest import MasterFactory, accounts_of, make_config
from harness import Master, gone, metric, wait_until

INTROSPECT = "testplatforms.behaviours:Introspect"


def forked(master: Master, worker: str, pid: int) -> bool:
    lines = master.worker_log(worker).read_text().splitlines()
    starting = [line for line in lines if "worker starting" in line and f"pid={pid}" in line]
    assert starting, f"no start line for {worker} pid {pid}"
    return "forked=True" in starting[-1]


@pytest.mark.timeout(60)
def test_forked_workers_do_not_inherit_the_templates_state(
    start_master: MasterFactory, tmp_path: Path
) -> None:
    out = tmp_path / "introspect"
    out.mkdir()
    master = start_master(
        make_config(workers=2, accounts=accounts_of(INTROSPECT, 2, out_dir=str(out)))
    )
    pids = master.wait_all_running(["worker1", "worker2"])
    template = master.log.wait_for(event="fork template ready")
    wait_until(lambda: len(list(out.glob("*.json"))) == 2, 15, "reports written")
    # Once more after a crash: the replacement comes from the template's spare.
    (out / "acc-1.json").unlink()
    spares = 'hiscrm_worker_starts_total{how="spare"}'
    with master.http() as http:
        ready = "hiscrm_fork_template_spare_ready"
        wait_until(lambda: metric(http.get("/metrics").text, ready) == 1, 10, "a spare ready")
        before = metric(http.get("/metrics").text, spares)
        assert before == 2  # the template forked one spare for each first worker
        mark = master.mark()
        os.kill(pids["worker1"], signal.SIGKILL)
        respawned = master.wait_running("worker1", after=mark)
        metrics = http.get("/metrics").text
    wait_until(lambda: (out / "acc-1.json").exists(), 15, "report of the replacement")
    assert metric(metrics, spares) == before + 1
    assert metric(metrics, 'hiscrm_worker_starts_total{how="spawn"}') == 0
    assert metric(metrics, "hiscrm_fork_templates_started_total") == 1

    reports = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}
    assert reports["acc-1"]["pid"] == respawned
    assert reports["acc-2"]["pid"] == pids["worker2"]
    for worker, report in (("worker1", reports["acc-1"]), ("worker2", reports["acc-2"])):
        assert forked(master, worker, int(report["pid"]))
        assert report["ppid"] == master.pid  # the master's child, not the template's
        assert report["pgid"] == report["sid"] == report["pid"]  # its own process group
        targets = list(report["fds"].values())
        assert not [t for t in targets if "template" in t], targets
        logs = [t for t in targets if t.endswith(".log")]
        assert logs, targets
        assert all(t.endswith(f"{worker}.log") for t in logs), targets
        assert report["fds"]["0"] == os.devnull
        assert "on_sigterm" in report["sigterm"]  # the worker's handler, not the template's
        assert report["sighup"] == "<Handlers.SIG_DFL: 0>"
        assert report["logging_handlers"] == ["_StdlibBridge"]
        assert report["process_name"] == f"hiscrm-{worker}"
    assert reports["acc-1"]["random"] != reports["acc-2"]["random"]
    template_fds = {
        os.readlink(f"/proc/{template['pid']}/fd/{fd}")
        for fd in os.listdir(f"/proc/{template['pid']}/fd")
    }
    assert any(t.endswith("template.log") for t in template_fds)
    assert master.stop() == 0


@pytest.mark.timeout(60)
def test_forked_idle_workers_share_most_of_their_memory(
    start_master: MasterFactory, record_property: Callable[[str, object], None]
) -> None:
    master = start_master(make_config(workers=4, accounts=[]))
    pids = master.wait_all_running([f"worker{n}" for n in range(1, 5)])
    time.sleep(1.0)  # idle: a few heartbeats, nothing else
    uss = [psutil.Process(pid).memory_full_info().uss for pid in pids.values()]
    rss = [psutil.Process(pid).memory_info().rss for pid in pids.values()]
    mib = 1 << 20
    report = (
        f"idle forked workers: USS {[round(u / mib, 1) for u in uss]} MiB, "
        f"RSS {[round(r / mib, 1) for r in rss]} MiB"
    )
    print(report)
    record_property("idle_worker_uss_mib", [round(u / mib, 1) for u in uss])
    # What a worker has to itself is a fraction of what it maps: the rest is the
    # template's pages, shared.
    assert all(u < r / 2 for u, r in zip(uss, rss, strict=True)), report
    assert master.stop() == 0


@pytest.mark.timeout(60)
def test_a_dead_template_is_replaced_at_the_next_start(start_master: MasterFactory) -> None:
    master = start_master(make_config(workers=2))
    pids = master.wait_all_running(["worker1", "worker2"])
    first = master.log.wait_for(event="fork template ready")
    spare = wait_until_spare(first["pid"], master.pid)
    mark = master.mark()
    os.kill(first["pid"], signal.SIGKILL)
    died = master.log.wait_for(after=mark, event="fork template died; starting a new one")
    assert died["level"] == "error"
    assert died["pid"] == first["pid"]
    # Its spare goes with it, and is reaped: no zombie left under the master.
    wait_until(lambda: gone(spare), 5, "the spare gone")
    wait_until(lambda: not zombies(master.pid), 5, "no zombies")
    second = master.log.wait_for(after=mark, event="fork template ready")
    assert second["pid"] != first["pid"]

    mark = master.mark()
    os.kill(pids["worker1"], signal.SIGKILL)
    back = master.wait_running("worker1", after=mark)
    assert forked(master, "worker1", back)
    assert psutil.Process(pids["worker2"]).is_running()  # untouched by the template's death
    with master.http() as http:  # a killed template is not a bug of the master
        assert http.get("/status").json()["internal_errors_total"] == 0
        assert metric(http.get("/metrics").text, "hiscrm_fork_template_failures_total") == 1
    assert master.stop() == 0
    assert not master.log.find(event="fork template died; starting a new one", pid=second["pid"])


def wait_until_spare(template_pid: int, master_pid: int) -> int:
    """The template's spare: a child of the master that is not a registered worker and
    whose log output so far went to the template's log."""
    found: list[int] = []

    def spare_present() -> bool:
        for child in psutil.Process(master_pid).children():
            if child.pid == template_pid:
                continue
            try:
                fds = {os.readlink(f"/proc/{child.pid}/fd/{fd}") for fd in ("1", "2")}
            except OSError:
                continue
            if all(fd.endswith("template.log") for fd in fds):
                found.append(child.pid)
                return True
        return False

    wait_until(spare_present, 10, "the template's spare")
    return found[0]


def zombies(pid: int) -> list[int]:
    return [c.pid for c in psutil.Process(pid).children() if c.status() == psutil.STATUS_ZOMBIE]


@pytest.mark.timeout(60)
def test_a_sigterm_to_the_template_too_is_a_clean_shutdown(start_master: MasterFactory) -> None:
    """A stop that signals every process (``pkill``, a service manager) stops the master as
    a SIGTERM does; the template is the master's to retire, and does not 'die'."""
    master = start_master(make_config(workers=2))
    master.wait_all_running(["worker1", "worker2"])
    template = master.log.wait_for(event="fork template ready")["pid"]
    os.kill(template, signal.SIGTERM)
    os.kill(master.pid, signal.SIGTERM)
    assert master.proc is not None
    assert master.proc.wait(20) == 0
    assert not master.log.find(event="fork template died; starting a new one")
    assert not [e for e in master.log.events if e.get("level") in ("error", "critical")]


@pytest.mark.timeout(90)
def test_a_template_started_early_for_other_platforms_is_replaced_before_any_fork(
    start_master: MasterFactory,
) -> None:
    """The template is started before the master has read its store, with the platforms
    the config file declares; an account added through the API on another platform makes
    the workers need more, so that template is let go and the workers fork from one that
    loads them all."""
    master = start_master(make_config(workers=1, accounts=accounts_of("demo", 1)))
    master.wait_running("worker1")
    with master.http() as http:
        added = {"id": "api-1", "platform": "testplatforms.behaviours:Idle"}
        assert http.post("/accounts", json=added).status_code == 201
    assert master.stop() == 0

    mark = master.mark()
    master.start()
    replaced = master.log.wait_for(
        event="the template started early loads other platforms than the workers need; "
        "starting another",
        timeout=30,
        after=mark,
    )
    ready = master.log.wait_for(event="fork template ready", timeout=30, after=mark)
    assert ready["pid"] != replaced["pid"]
    assert gone(replaced["pid"])
    pid = master.wait_running("worker1", after=mark)
    assert forked(master, "worker1", pid)
    with master.http() as http:
        metrics = http.get("/metrics").text
        assert metric(metrics, "hiscrm_fork_templates_started_total") == 1
        assert metric(metrics, 'hiscrm_worker_starts_total{how="spawn"}') == 0
        states = {a["id"]: a["state"] for a in http.get("/accounts").json()["items"]}
    assert states.keys() == {"acc-1", "api-1"}
    assert master.stop() == 0
