"""The master runs the installed hiscrm wherever it is started from, and so do its
template and workers: never what the working directory holds. (``python -m`` puts the
working directory first on ``sys.path``, and workers are given the master's path, so a
directory holding the repository checked out as ``hiscrm/``, or a module named like one
the master imports, used to be imported instead.)"""

import sys
from pathlib import Path

import psutil
import pytest
from conftest import MasterFactory, make_config
from harness import TESTS_DIR, Master, wait_until

# In the working directory: the repository checked out as "hiscrm" (a directory without
# __init__.py, which shadowed an editable install), and a module named like a dependency.
CHECKOUT = {
    "hiscrm/README.md": "the repository, checked out as hiscrm\n",
    "hiscrm/hiscrm/__init__.py": "raise ImportError('the checkout in the working directory')\n",
}
DEPENDENCY = {"structlog.py": "raise ImportError('structlog from the working directory')\n"}
# Only the test platforms on PYTHONPATH: hiscrm comes from where it is installed.
INSTALLED = {"PYTHONPATH": str(TESTS_DIR)}


def fill(directory: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(text)
    return directory


def assert_serves(master: Master) -> None:
    """Template, workers and accounts up, and a clean stop."""
    try:
        master.log.wait_for(20, event="fork template ready")
    except AssertionError:
        raise AssertionError(f"no template; the master said:\n{master.output()[-3000:]}") from None
    master.wait_all_running(["worker1", "worker2"])
    with master.http() as http:
        wait_until(
            lambda: {a["state"] for a in http.get("/accounts").json()["items"]} == {"running"},
            20,
            "every account running",
        )
        assert http.get("/status").json()["pid"] == master.pid  # re-executed in place
    assert master.stop() == 0, master.output()[-2000:]


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    "holds",
    [pytest.param(CHECKOUT, id="a-hiscrm-checkout"), pytest.param(DEPENDENCY, id="structlog.py")],
)
def test_python_m_ignores_what_the_working_directory_holds(
    start_master: MasterFactory, tmp_path: Path, holds: dict[str, str]
) -> None:
    cwd = fill(tmp_path / "elsewhere", holds)
    master = start_master(make_config(workers=2), env=INSTALLED, cwd=cwd)
    assert_serves(master)


@pytest.mark.timeout(90)
def test_python_m_from_the_root_directory(start_master: MasterFactory) -> None:
    assert_serves(start_master(make_config(workers=2), env=INSTALLED, cwd=Path("/")))


@pytest.mark.timeout(90)
def test_the_hiscrm_master_script_runs_anywhere(
    start_master: MasterFactory, tmp_path: Path
) -> None:
    script = Path(sys.executable).parent / "hiscrm-master"
    assert script.exists(), "the hiscrm-master console script is installed with the package"
    cwd = fill(tmp_path / "elsewhere", {**CHECKOUT, **DEPENDENCY})
    master = start_master(make_config(workers=2), env=INSTALLED, cwd=cwd, command=[str(script)])
    assert_serves(master)


# What a spawned worker's interpreter imports before it is given the master's path.
SPAWN_MACHINERY = {
    "multiprocessing/__init__.py": "raise ImportError('multiprocessing from the working dir')\n"
}


@pytest.mark.timeout(90)
def test_a_spawned_worker_ignores_the_working_directory_and_its_children_see_the_plain_env(
    start_master: MasterFactory, tmp_path: Path
) -> None:
    """Without a template every worker is a fresh interpreter started by multiprocessing:
    the working directory stays off its path from its first import, and what its platform
    starts does not inherit the variable that kept it off."""
    pid_file = tmp_path / "children"
    hog = {
        "id": "with-a-child",
        "platform": "testplatforms.behaviours:ChildHog",
        "options": {"step_mb": 1, "every_s": 5, "max_mb": 1, "pid_file": str(pid_file)},
    }
    config = make_config(workers=1, accounts=[hog], supervision={"fork_template": False})
    cwd = fill(tmp_path / "elsewhere", {**SPAWN_MACHINERY, **DEPENDENCY})
    master = start_master(config, env=INSTALLED, cwd=cwd)
    master.wait_all_running(["worker1"])
    wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), 20, "the child")
    child = psutil.Process(int(pid_file.read_text().split()[0]))
    assert "PYTHONSAFEPATH" not in child.environ()
    assert master.stop() == 0, master.output()[-2000:]


@pytest.mark.timeout(60)
def test_a_hook_command_gets_the_environment_the_master_was_given(
    start_master: MasterFactory, tmp_path: Path
) -> None:
    """What keeps the working directory off the paths of the master's own interpreters
    is not passed on to what it runs for the user."""
    seen = tmp_path / "seen"
    hook = {
        "name": "env",
        "on": ["worker.state"],
        "command": ["sh", "-c", f'echo "${{PYTHONSAFEPATH-unset}}" >> {seen}'],
    }
    master = start_master(make_config(workers=1, hooks=[hook]), env=INSTALLED)
    master.wait_all_running(["worker1"])
    wait_until(lambda: seen.exists() and seen.read_text().strip(), 20, "the hook ran")
    assert set(seen.read_text().split()) == {"unset"}
    assert master.stop() == 0, master.output()[-2000:]
