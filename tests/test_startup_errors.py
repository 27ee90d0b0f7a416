"""What the master needs before it can run, missing: each is one line on stderr and exit 1,
before any worker starts; never a traceback, never a master that starts half-working."""

import ctypes
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from conftest import MasterFactory, make_config
from harness import REPO, TESTS_DIR, LogReader, wait_until

from hiscrm.master.api.auth import TokenError, TokenOrigin, load_or_create_token

PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2


def _obey_file_permissions() -> None:
    """In the child before exec: root keeps its uid but loses the capabilities that let it
    ignore file permissions, so a mode it may not write is refused as for anyone else."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def run_master(tmp_path: Path, obey_permissions: bool = False) -> subprocess.CompletedProcess[str]:
    """``python -m hiscrm.master`` on ``tmp_path/st``, expected to give up at once; one that
    runs instead is killed with its whole session after the timeout and the test fails."""
    config = tmp_path / "hiscrm.toml"
    config.write_text("state_dir = 'st'\nworkers = 1\n[api]\nport = 0\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS_DIR)])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hiscrm.master", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=env,
        start_new_session=True,
        preexec_fn=_obey_file_permissions if obey_permissions else None,
    )
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=10)
        pytest.fail(f"the master did not give up within 20 s; it ran: {err[-1500:]}")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # anything it started, were it to start
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def assert_one_line_exit_1(result: subprocess.CompletedProcess[str], *expected: str) -> str:
    assert result.returncode == 1, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith("hiscrm: "), lines[0]
    for text in expected:
        assert text in lines[0]
    return lines[0]


def nothing_started(state: Path) -> None:
    assert not (state / "master.json").exists()
    assert not (state / "hiscrm.db").exists(), "the store was opened: the master ran"


def make_state(tmp_path: Path) -> Path:
    state = tmp_path / "st"
    (state / "logs").mkdir(parents=True)
    return state


TOKEN_PROBLEMS: dict[str, tuple[Callable[[Path], None], str]] = {
    "a directory": (lambda p: p.mkdir(), "is a directory, not a file"),
    "not UTF-8": (lambda p: p.write_bytes(b"\xff\xfe\xfa token\n"), "is not UTF-8 text"),
    "a dangling symlink": (
        lambda p: p.symlink_to(p.parent / "secrets" / "token"),
        "is a symbolic link to",
    ),
    "a FIFO": (lambda p: os.mkfifo(p), "is not a regular file"),
    "with a space": (lambda p: p.write_text("two words\n"), "visible ASCII characters only"),
    "with a control character": (
        lambda p: p.write_text("tok\x1ben\n"),
        "visible ASCII characters only",
    ),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("problem", list(TOKEN_PROBLEMS))
def test_an_unusable_token_file_stops_the_start(tmp_path: Path, problem: str) -> None:
    state = make_state(tmp_path)
    make, expected = TOKEN_PROBLEMS[problem]
    make(state / "token")
    line = assert_one_line_exit_1(run_master(tmp_path), f"{state / 'token'}: ", expected)
    nothing_started(state)
    logged = LogReader(state / "logs" / "master.log").find(event="master cannot start")
    assert [(e["level"], e["error"]) for e in logged] == [("error", line.removeprefix("hiscrm: "))]
    if problem == "a dangling symlink":  # not followed into creating a file elsewhere
        assert not (state / "secrets").exists()
        assert "create the token there or remove the link" in line


@pytest.mark.timeout(60)
def test_an_unwritable_logs_dir_stops_the_start(tmp_path: Path) -> None:
    state = make_state(tmp_path)
    (state / "logs").chmod(0o555)
    try:
        result = run_master(tmp_path, obey_permissions=True)
    finally:
        (state / "logs").chmod(0o755)
    assert_one_line_exit_1(result, f"{state / 'logs'}: cannot write there: Permission denied")
    nothing_started(state)


@pytest.mark.timeout(60)
def test_an_unwritable_state_dir_stops_the_start(tmp_path: Path) -> None:
    """The lock file is there from an earlier run, so only writing shows the problem."""
    state = make_state(tmp_path)
    (state / "master.lock").touch()
    state.chmod(0o555)
    try:
        result = run_master(tmp_path, obey_permissions=True)
    finally:
        state.chmod(0o755)
    assert_one_line_exit_1(result, f"{state}: cannot write there: Permission denied")
    nothing_started(state)


@pytest.mark.timeout(60)
def test_a_master_log_that_cannot_be_opened_stops_the_start(tmp_path: Path) -> None:
    state = make_state(tmp_path)
    (state / "logs" / "master.log").mkdir()
    assert_one_line_exit_1(
        run_master(tmp_path), f"{state / 'logs' / 'master.log'}: cannot open the master log"
    )
    nothing_started(state)


@pytest.mark.timeout(60)
def test_a_failed_start_leaves_the_state_dir_free(tmp_path: Path) -> None:
    """The lock is let go and a stale master.json removed, so the next start is not
    refused as "another master"."""
    state = make_state(tmp_path)
    (state / "master.json").write_text(json.dumps({"pid": 2**22 + 7, "api_url": "x"}))
    (state / "token").mkdir()
    assert_one_line_exit_1(run_master(tmp_path), "is a directory")
    assert not (state / "master.json").exists()
    (state / "token").rmdir()
    (state / "token").write_bytes(b"\xff\n")
    assert_one_line_exit_1(run_master(tmp_path), "is not UTF-8 text")


# The token loader on its own: what it repairs, what it follows.


def test_an_empty_token_file_gets_a_new_token(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("\n")
    (tmp_path / "token").chmod(0o644)
    token = load_or_create_token(tmp_path)
    assert token.origin is TokenOrigin.EMPTY_REPLACED
    assert len(token.value) > 30
    assert (tmp_path / "token").read_text() == token.value + "\n"
    assert (tmp_path / "token").stat().st_mode & 0o777 == 0o600
    again = load_or_create_token(tmp_path)
    assert (again.value, again.origin) == (token.value, TokenOrigin.READ)


def test_a_token_link_to_a_file_is_followed(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "tok").write_text("my-own.token_42~\n")
    (tmp_path / "secrets" / "tok").chmod(0o640)
    (tmp_path / "token").symlink_to(tmp_path / "secrets" / "tok")
    token = load_or_create_token(tmp_path)
    assert (token.value, token.origin) == ("my-own.token_42~", TokenOrigin.MODE_FIXED)
    assert (tmp_path / "secrets" / "tok").stat().st_mode & 0o777 == 0o600


def test_a_new_token_is_owner_only(tmp_path: Path) -> None:
    token = load_or_create_token(tmp_path)
    assert token.origin is TokenOrigin.CREATED
    assert (tmp_path / "token").read_text() == token.value + "\n"
    assert (tmp_path / "token").stat().st_mode & 0o777 == 0o600


def test_an_oversized_token_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("x" * 5000)
    with pytest.raises(TokenError, match="over 4096 bytes"):
        load_or_create_token(tmp_path)


def _store_with_rows(path: Path) -> None:
    """A real store (this program's schema) with enough rows to span many pages."""
    from hiscrm.master.data import sqlite_schema

    conn = sqlite_schema.connect(path)
    sqlite_schema.migrate(conn)
    conn.executemany(
        "INSERT INTO notifications (account_id, id, version, hash, seq, synced_at, category, "
        "text, created_at) VALUES ('a', ?, 1, 'h', ?, 0, 'c', ?, 1763848020000)",
        [(f"n{i}", i, "x" * 500) for i in range(4000)],
    )
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def _truncate(path: Path) -> None:
    _store_with_rows(path)
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size // 2)


def _drop_core_table(path: Path) -> None:
    _store_with_rows(path)
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE accounts")
    conn.commit()
    conn.close()


def _alter_kind_table(path: Path) -> None:
    _store_with_rows(path)
    conn = sqlite3.connect(path)
    conn.execute("ALTER TABLE messages DROP COLUMN sender_name")
    conn.commit()
    conn.close()


STORE_PROBLEMS: dict[str, tuple[Callable[[Path], None], str]] = {
    "not a database": (
        lambda p: p.write_bytes(b"hello, I am a text file\n" * 100),
        "not a usable SQLite database",
    ),
    "truncated": (_truncate, "database disk image is malformed"),
    "a core table dropped": (_drop_core_table, "table 'accounts' is missing"),
    "a column dropped": (_alter_kind_table, "table 'messages' lacks columns sender_name"),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("problem", list(STORE_PROBLEMS))
def test_an_unusable_store_stops_the_start_in_one_line(tmp_path: Path, problem: str) -> None:
    state = make_state(tmp_path)
    make, expected = STORE_PROBLEMS[problem]
    make(state / "hiscrm.db")
    result = run_master(tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    # The store opens after logging has begun: its failure is the one line that says hiscrm:
    lines = [line for line in result.stderr.splitlines() if line.startswith("hiscrm: ")]
    assert len(lines) == 1, result.stderr[-2000:]
    line = lines[0]
    assert f"cannot use the store {state / 'hiscrm.db'}" in line
    assert expected in line
    assert "restore it from a backup, or move it away" in line
    assert "master cannot start" not in result.stderr  # not said twice
    assert not (state / "master.json").exists()
    logged = LogReader(state / "logs" / "master.log").find(event="master cannot start")
    assert [e["level"] for e in logged] == ["error"]
    assert not LogReader(state / "logs" / "master.log").find(event="worker state")


def _with_marker(marker: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("HISCRM_TEST_EARLY") == marker:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


@pytest.mark.timeout(60)
@pytest.mark.parametrize("problem", ["config", "state dir"])
def test_a_master_that_gives_up_takes_its_early_template_along(
    tmp_path: Path, problem: str
) -> None:
    """The fork template starts before the configuration is read (it loads the worker
    code meanwhile); a master that then gives up leaves nothing running."""
    config = tmp_path / "hiscrm.toml"
    if problem == "config":
        config.write_text("workers = 1\nno_such_key = 1\n")
    else:
        (tmp_path / "st").write_text("a file where the state dir should be")
        config.write_text("state_dir = 'st'\nworkers = 1\n[api]\nport = 0\n")
    marker = f"{os.getpid()}-{problem}"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS_DIR)]),
        "HISCRM_TEST_EARLY": marker,
    }
    result = subprocess.run(
        [sys.executable, "-m", "hiscrm.master", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=30,
    )
    assert result.returncode == (2 if problem == "config" else 1), result.stderr[-1500:]
    try:
        wait_until(lambda: not _with_marker(marker), 10, "no process of that master left")
    finally:
        for process in _with_marker(marker):
            process.kill()


@pytest.mark.timeout(60)
def test_a_master_whose_api_cannot_be_built_stops_its_workers_and_exits_1(
    start_master: MasterFactory, tmp_path: Path
) -> None:
    """The API is built beside the first workers; if it cannot be (here its module raises
    at import), the master does not run on without it: it says so, stops its workers
    and exits 1."""
    code = tmp_path / "code"
    shutil.copytree(REPO / "hiscrm", code / "hiscrm")
    front = code / "hiscrm" / "master" / "front.py"
    with front.open("a") as source:
        source.write('\nraise ImportError("the front cannot be imported (test)")\n')
    master = start_master(make_config(workers=2), code_dir=code)
    assert master.proc is not None
    assert master.proc.wait(30) == 1, master.output()[-2000:]
    failed = master.log.wait_for(event="the API cannot be built; stopping")
    assert failed["level"] == "critical"
    assert "the front cannot be imported (test)" in failed["exception"]
    master.log.wait_for(event="master stopped")
