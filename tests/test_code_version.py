"""One checkout, one code version: the master, a spawned worker and a forked worker report
the same ``code_version``, whatever each happened to import; a change to a file of the
code gives a new one."""

import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import MasterFactory, make_config
from harness import TESTS_DIR, Master

from hiscrm.code_fingerprint import source_version


def versions(master: Master) -> tuple[str, dict[str, str]]:
    with master.http() as http:
        status = http.get("/status").json()
        workers = http.get("/workers").json()["items"]
    return status["code_version"], {w["id"]: w["code_version"] for w in workers}


def how_started(master: Master) -> dict[str, bool]:
    """Whether each worker's running process was forked, from its log."""
    forked = {}
    for worker in ("worker1", "worker2"):
        starts = [
            line
            for line in master.worker_log(worker).read_text().splitlines()
            if "worker starting" in line
        ]
        forked[worker] = "forked=True" in starts[-1]
    return forked


ACCOUNTS: list[dict[str, Any]] = [
    # Two platforms that import different modules, so no two processes import the same set.
    {"id": "acc-1", "platform": "demo"},
    {"id": "acc-2", "platform": "testplatforms.behaviours:Idle"},
]


@pytest.mark.timeout(90)
def test_master_spawned_and_forked_workers_report_one_code_version(
    start_master: MasterFactory,
) -> None:
    forked_master = start_master(make_config(workers=2, accounts=ACCOUNTS))
    forked_master.wait_all_running(["worker1", "worker2"])
    forked_master.log.wait_for(event="fork template ready")
    spawned_master = start_master(
        make_config(workers=2, accounts=ACCOUNTS, supervision={"fork_template": False})
    )
    spawned_master.wait_all_running(["worker1", "worker2"])

    assert how_started(forked_master) == {"worker1": True, "worker2": True}
    assert how_started(spawned_master) == {"worker1": False, "worker2": False}
    master_version, forked = versions(forked_master)
    spawned_master_version, spawned = versions(spawned_master)
    assert set(forked.values()) == {master_version}
    assert set(spawned.values()) == {master_version}
    assert spawned_master_version == master_version
    assert master_version == expected_version()
    assert forked_master.stop() == 0
    assert spawned_master.stop() == 0


def expected_version() -> str:
    """What this test process computes for the same code, on the masters' path."""
    sys.path.insert(0, str(TESTS_DIR))
    try:
        return source_version(
            ["hiscrm.platforms.demo:DemoPlatform", "testplatforms.behaviours:Idle"]
        )
    finally:
        sys.path.remove(str(TESTS_DIR))


def test_the_version_covers_the_package_and_the_platform_modules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugins = tmp_path / "plugins"
    (plugins / "shop").mkdir(parents=True)
    (plugins / "shop" / "__init__.py").write_text("")
    (plugins / "shop" / "platform.py").write_text("class P: ...\n")
    (plugins / "shop" / "helpers.py").write_text("X = 1\n")
    (plugins / "elsewhere.py").write_text("Y = 1\n")
    monkeypatch.syspath_prepend(str(plugins))
    specs = ["shop.platform:P"]
    first = source_version(specs)
    assert source_version(specs) == first  # stable
    assert source_version([]) != first  # the platform's package counts

    (plugins / "elsewhere.py").write_text("Y = 2\n")  # not part of the platform's code
    assert source_version(specs) == first
    for changed in ("platform.py", "helpers.py", "__init__.py"):
        file = plugins / "shop" / changed
        file.write_text(file.read_text() + "# edited\n")
        assert source_version(specs) != first, changed
        first = source_version(specs)
    # A module or package named in code.packages counts too.
    assert source_version(specs, ["elsewhere"]) != first
    # Nothing was imported to find out.
    assert "shop" not in sys.modules
    assert "elsewhere" not in sys.modules
    os.utime(plugins / "shop" / "platform.py", (time.time() + 5, time.time() + 5))
    assert source_version(specs) == first  # a new mtime alone is no new code
