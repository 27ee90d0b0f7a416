"""hiscrmctl when things go wrong: bad flags, actions that fail, a missing token, and a
master.json that points somewhere else. Every failure is one clear sentence (JSON with
``--json``), exit 1 or 2, and the token is never sent anywhere but the master."""

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import BROKEN_RUNTIME, MasterFactory, accounts_of, broken_worker_code, make_config
from harness import Master
from test_ctl import CTL, ctl

# --- flags: usage errors, exit 2, never a traceback -----------------------------------------

BAD_FLAGS = [
    (["--timeout", "-1", "status"], "argument --timeout: must be more than 0"),
    (["--timeout", "0", "status"], "argument --timeout: must be more than 0"),
    (["--timeout", "nan", "status"], "argument --timeout: must be more than 0"),
    (["--timeout", "inf", "status"], "argument --timeout: must be more than 0"),
    (["--timeout", "1e9", "status"], "argument --timeout: must be more than 0"),
    (["--timeout", "soon", "status"], "argument --timeout: 'soon' is not a number of seconds"),
    (["logs", "worker1", "-n", "-5"], "argument -n/--lines: must be from 0 to 10000, got -5"),
    (["logs", "worker1", "-n", "10001"], "argument -n/--lines: must be from 0 to 10000"),
    (["logs", "worker1", "-n", "1e3"], "argument -n/--lines: '1e3' is not a whole number"),
    (["sync", "acc-1", "--from-seq", "-1"], "argument --from-seq: must be from 0 to"),
    (["sync", "acc-1", "--from-seq", str(2**63)], "argument --from-seq: must be from 0 to"),
    (["--state-dir", "", "status"], "argument --state-dir: must not be empty"),
]


def run_ctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CTL, *args], capture_output=True, text=True, timeout=60, env=env or dict(os.environ)
    )


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("args", "problem"), BAD_FLAGS)
def test_bad_flag_values_are_usage_errors(tmp_path: Path, args: list[str], problem: str) -> None:
    where = [] if args[0] == "--state-dir" else ["--state-dir", str(tmp_path)]
    result = run_ctl(*where, *args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert problem in result.stderr.splitlines()[-1]
    as_json = run_ctl("--json", *where, *args)
    assert as_json.returncode == 2
    error = json.loads(as_json.stdout)
    assert problem in error["error"]
    assert error["usage"].startswith("usage: hiscrmctl")


@pytest.mark.timeout(30)
def test_json_errors_without_a_master(tmp_path: Path) -> None:
    result = run_ctl("--state-dir", str(tmp_path), "status", "--json")
    assert result.returncode == 1
    error = json.loads(result.stdout)
    assert error["error"].startswith("no master is running with state directory")
    assert error["path"] == str(tmp_path / "master.json")
    assert result.stderr == ""


# --- actions that do not reach their goal -------------------------------------------------


@pytest.mark.timeout(90)
def test_restart_and_start_into_boot_failed_say_what_happened(
    start_master: MasterFactory, tmp_path: Path
) -> None:
    config = make_config(
        workers=1,
        accounts=accounts_of("demo"),
        supervision={"backoff_initial_s": 0.3, "backoff_max_s": 1.2},
    )
    master = start_master(config, code_dir=broken_worker_code(tmp_path))
    master.log.wait_for(event="worker state", worker="worker1", new="boot_failed", timeout=20)

    restart = ctl(master, "restart", "worker1")
    assert restart.returncode == 1
    assert "done" not in restart.stdout + restart.stderr
    first, *notes = restart.stderr.splitlines()
    assert first.startswith("hiscrmctl: restart failed: worker1 is boot_failed: ")
    assert "code 78" in first
    assert any(BROKEN_RUNTIME in line for line in notes)  # the log's end

    started = ctl(master, "start", "worker1", "--json")
    assert started.returncode == 1
    error = json.loads(started.stdout)
    assert error["error"].startswith("start failed: worker1 is boot_failed")
    assert error["worker"]["state"] == "boot_failed"
    assert error["action"] == "start"

    stop = ctl(master, "stop", "worker1")
    assert (stop.returncode, stop.stderr) == (0, "")
    assert "worker1: stop done, stopped" in stop.stdout
    assert master.stop() == 0


@pytest.mark.timeout(120)
def test_reload_whose_replacement_does_not_start_says_so(
    start_master: MasterFactory, tmp_path: Path
) -> None:
    marker = tmp_path / "worker2-broken"
    accounts = accounts_of("demo", 2, rate=5.0)
    # Spawned workers import the runtime themselves, so worker2's replacement fails alone.
    config = make_config(workers=2, accounts=accounts, supervision={"fork_template": False})
    code = broken_worker_code(tmp_path, only_in="worker2")
    master = start_master(config, code_dir=code, env={"HISCRM_TEST_BROKEN_MARKER": str(marker)})
    pids = master.wait_all_running(["worker1", "worker2"])
    marker.touch()

    reload = ctl(master, "reload")
    assert reload.returncode == 1
    assert "None" not in reload.stdout
    assert f"worker2: pid {pids['worker2']} -> no new process (boot_failed)" in reload.stdout
    assert f"worker1: pid {pids['worker1']} -> pid " in reload.stdout
    assert reload.stderr.startswith("hiscrmctl: reload failed after ")
    assert "worker2 cannot load the worker runtime" in reload.stderr
    assert "reload complete" not in reload.stdout

    as_json = ctl(master, "reload", "--json")
    assert as_json.returncode == 1
    error = json.loads(as_json.stdout)
    assert error["error"].startswith("reload failed")
    assert error["complete"] is False
    marker.unlink()
    assert master.stop() == 0


# --- the token: missing, refused, and never sent elsewhere --------------------------------


@pytest.fixture(scope="module")
def shared(start_module_master: MasterFactory) -> Master:
    master = start_module_master(make_config(workers=1))
    master.wait_running("worker1")
    return master


@contextmanager
def moved_aside(path: Path) -> Iterator[None]:
    aside = path.with_name(path.name + ".aside")
    path.rename(aside)
    try:
        yield
    finally:
        aside.rename(path)


@contextmanager
def master_json_changed(master: Master, **changes: Any) -> Iterator[dict[str, Any]]:
    """master.json rewritten with ``changes`` (None removes a key), restored afterwards."""
    path = master.state_dir / "master.json"
    original = path.read_text()
    info = {**json.loads(original), **changes}
    path.write_text(json.dumps({k: v for k, v in info.items() if v is not None}))
    try:
        yield info
    finally:
        path.write_text(original)


@pytest.mark.timeout(60)
def test_a_deleted_token_file_is_named_not_refused(shared: Master) -> None:
    token = shared.state_dir / "token"
    with moved_aside(token):
        missing = ctl(shared, "status")
        assert missing.returncode == 1
        assert missing.stderr.strip() == (
            f"hiscrmctl: the API token file {token} is missing: it is made when the master "
            "starts; restart the master to make a new one"
        )
        as_json = ctl(shared, "--json", "status")
        assert as_json.returncode == 1
        assert json.loads(as_json.stdout)["path"] == str(token)
        # A master that does not say whether it wants a token: its 401 tells.
        with master_json_changed(shared, auth=None):
            older = ctl(shared, "status")
        assert older.returncode == 1
        assert f"the API token file {token} is missing" in older.stderr
    assert ctl(shared, "status").returncode == 0


@pytest.mark.timeout(60)
def test_a_wrong_token_is_reported_as_refused(shared: Master) -> None:
    token = shared.state_dir / "token"
    real = token.read_text()
    token.write_text("wrong\n")  # the master keeps the token it read at start
    try:
        refused = ctl(shared, "status")
        as_json = ctl(shared, "status", "--json")
    finally:
        token.write_text(real)
    assert refused.returncode == 1
    assert f"the master refused the token in {token}: invalid token" in refused.stderr
    assert (as_json.returncode, json.loads(as_json.stdout)["status"]) == (1, 401)


class Listener:
    """A local port that records whatever connects to it (a hostile process's)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    self.received.append(conn.recv(65536))
                except TimeoutError:
                    self.received.append(b"")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    hostile = Listener()
    yield hostile
    hostile.close()


PROXY_VARIABLES = ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "HTTPS_PROXY")


@pytest.mark.timeout(60)
def test_proxy_variables_are_ignored(shared: Master, listener: Listener) -> None:
    env = {k: v for k, v in os.environ.items() if k.lower() != "no_proxy"}
    env.update({name: f"http://127.0.0.1:{listener.port}" for name in PROXY_VARIABLES})
    result = subprocess.run(
        [*CTL, "--state-dir", str(shared.state_dir), "--timeout", "5", "status"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "workers 1/1 running" in result.stdout
    assert listener.received == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://127.0.0.1:{port}/api/v1", "is not where the master (pid {pid}) listens"),
        ("http://10.11.12.13:{port}/api/v1", "is not where the master (pid {pid}) listens"),
        ("http://localhost:{port}/api/v1", "is not http://<IP address>:<port>/"),
        ("https://127.0.0.1:{port}/api/v1", "is not http://<IP address>:<port>/"),
        ("http://user:pw@127.0.0.1:{port}/api/v1", "is not http://<IP address>:<port>/"),
    ],
)
def test_the_token_goes_only_where_the_master_listens(
    shared: Master, listener: Listener, url: str, problem: str
) -> None:
    with master_json_changed(shared, api_url=url.format(port=listener.port)) as info:
        result = ctl(shared, "--timeout", "3", "status")
    assert result.returncode == 1
    assert problem.format(pid=info["pid"]) in result.stderr
    assert result.stderr.strip().endswith("not sending the token")
    assert listener.received == []


@contextmanager
def process(*argv: str, **popen: Any) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(list(argv), **popen)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(10)


@pytest.mark.timeout(60)
def test_the_token_goes_only_to_the_master_of_this_state_dir(
    shared: Master, listener: Listener, tmp_path: Path
) -> None:
    """master.json naming a live process that is not the master: a pid reused after the
    master died, a process that pretends, another master, another user's process."""
    url = f"http://127.0.0.1:{listener.port}/api/v1"
    with (
        process("sleep", "60") as other,
        master_json_changed(shared, pid=other.pid, api_url=url),
    ):
        reused = ctl(shared, "status")
    assert reused.returncode == 1
    assert f"names pid {other.pid}, which is not a hiscrm master ('sleep 60')" in reused.stderr

    pretender = [sys.executable, "-c", "import time; time.sleep(60)", "-m", "hiscrm.master"]
    with process(*pretender) as fake, master_json_changed(shared, pid=fake.pid, api_url=url):
        pretends = ctl(shared, "status")
    assert pretends.returncode == 1
    assert "which is not the master of this state directory" in pretends.stderr
    assert str(shared.state_dir / "master.lock") in pretends.stderr

    # The real master, but master.json copied into another directory (with its own token).
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "master.json").write_text((shared.state_dir / "master.json").read_text())
    (elsewhere / "token").write_text("another-token\n")
    copied = ctl(elsewhere, "status")
    assert copied.returncode == 1
    assert "which is not the master of this state directory" in copied.stderr

    if os.geteuid() == 0:  # a process of another user
        sh = ["/bin/sh", "-c", "sleep 60; exit 0", "-m", "hiscrm.master"]
        with process(*sh, user=65534) as theirs, master_json_changed(shared, pid=theirs.pid):
            foreign = ctl(shared, "status")
        assert foreign.returncode == 1
        assert f"names pid {theirs.pid}, which runs as uid 65534" in foreign.stderr
    assert listener.received == []
    assert ctl(shared, "status").returncode == 0


@pytest.mark.timeout(60)
def test_a_master_json_that_is_a_link_is_not_followed(shared: Master, tmp_path: Path) -> None:
    info = shared.state_dir / "master.json"
    real = tmp_path / "real.json"
    real.write_text(info.read_text())
    with moved_aside(info):
        info.symlink_to(real)
        try:
            linked = ctl(shared, "status")
        finally:
            info.unlink()
    assert linked.returncode == 1
    assert f"cannot read {info}: it is a symbolic link, not trusted" in linked.stderr
