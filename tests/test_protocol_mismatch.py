"""A worker that loads a different protocol from disk than the master has in memory is
refused loudly on both sides and retried with backoff, never run half-compatible."""

import os
import shutil
import signal
from pathlib import Path

import pytest
from conftest import MasterFactory, make_config
from harness import REPO, metric, wait_until


@pytest.mark.timeout(60)
def test_changed_protocol_on_disk_is_refused_on_both_sides(
    start_master: MasterFactory, tmp_path: Path
) -> None:
    code = tmp_path / "code"
    shutil.copytree(REPO / "hiscrm", code / "hiscrm")
    master = start_master(make_config(workers=2), code_dir=code)
    pids = master.wait_all_running(["worker1", "worker2"])

    protocol_py = code / "hiscrm" / "protocol.py"
    source = protocol_py.read_text()
    changed = source.replace(
        'type: Literal["worker:goodbye"] = "worker:goodbye"\n',
        'type: Literal["worker:goodbye"] = "worker:goodbye"\n    note: str = ""\n',
    )
    assert changed != source
    protocol_py.write_text(changed)
    mark = master.mark()
    os.kill(pids["worker1"], signal.SIGKILL)

    refused = master.log.wait_for(
        after=mark, where=lambda e: e["event"].startswith("worker refused"), worker="worker1"
    )
    assert refused["level"] == "error"
    assert refused["worker_schema"] != refused["master_schema"]
    assert refused["worker_protocol"] == refused["master_protocol"]
    exited = master.log.wait_for(
        after=mark, event="worker exited", worker="worker1", reason="protocol_mismatch"
    )
    assert exited["code"] == 76
    assert any("the master refused this worker" in line for line in exited["log_tail"])
    master.log.wait_for(after=mark, event="worker state", worker="worker1", new="boot_failed")
    assert "the master refused this worker" in master.worker_log("worker1").read_text()
    with master.http() as http:
        last_exit = http.get("/workers/worker1").json()["last_exit"]
        metrics = http.get("/metrics").text
        wait_until(
            lambda: (
                "worker1 is boot_failed"
                in http.get("/healthz").json()["checks"]["workers"]["detail"]
            ),
            10,
            "health names it",
        )
    assert (last_exit["code"], last_exit["reason"]) == (76, "protocol_mismatch")
    assert metric(metrics, 'hiscrm_worker_up{worker="worker1"}') == 0
    master.log.wait_for(  # one line when it went (its detail follows the state)
        after=mark,
        event="health",
        status="degraded",
        where=lambda e: "worker1 is" in e["checks"].get("workers", ""),
    )
    # The untouched worker keeps running on the code it loaded.
    assert not master.log.find(event="worker exited", worker="worker2")
    assert master.stop() == 0
