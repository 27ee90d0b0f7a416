"""Running a real master in tests, reading what it logs, and checking nothing is left over.

Every master a test starts carries a unique marker in its environment; workers and their
children inherit it. After the test, any process still carrying the marker is a leftover:
it is killed and the test fails.
"""

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil

MARKER = "HISCRM_TEST_MARKER"
TESTS_DIR = Path(__file__).resolve().parent
REPO = TESTS_DIR.parent

# Fast supervision so tests do not wait long for timeouts and backoffs.
FAST_SUPERVISION = {
    "heartbeat_interval_s": 0.2,
    "heartbeat_timeout_s": 1.5,
    "start_timeout_s": 15.0,
    "stop_timeout_s": 1.5,
    "kill_timeout_s": 1.0,
    "backoff_initial_s": 0.2,
    "backoff_max_s": 1.0,
    "backoff_reset_after_s": 30.0,
}


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(config: dict[str, Any]) -> str:
    """Enough TOML for test configs: scalars, tables, and arrays of tables (accounts,
    hooks)."""

    def tables(value: Any) -> bool:
        return isinstance(value, list) and all(isinstance(v, dict) for v in value)

    lines = [
        f"{k} = {toml_value(v)}"
        for k, v in config.items()
        if not isinstance(v, dict) and not (tables(v) and v)
    ]
    for key, value in config.items():
        if isinstance(value, dict):
            lines.append(f"\n[{key}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in value.items()]
    for key, value in config.items():
        if tables(value):
            for table in value:
                lines.append(f"\n[[{key}]]")
                lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


class LogReader:
    """Reads a JSON-lines log incrementally; waits for an event with a deadline."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.events: list[dict[str, Any]] = []
        self._offset = 0
        self._partial = b""

    def refresh(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return self.events
        self._offset += len(data)
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        for line in lines:
            if line.strip():
                self.events.append(json.loads(line))
        return self.events

    def find(self, **fields: Any) -> list[dict[str, Any]]:
        self.refresh()
        return [e for e in self.events if all(e.get(k) == v for k, v in fields.items())]

    def wait_for(
        self,
        timeout: float = 10.0,
        where: Callable[[dict[str, Any]], bool] | None = None,
        after: int = 0,
        **fields: Any,
    ) -> dict[str, Any]:
        """The first event (from index ``after``) matching ``fields`` and ``where``."""
        deadline = time.monotonic() + timeout
        while True:
            self.refresh()
            for event in self.events[after:]:
                if all(event.get(k) == v for k, v in fields.items()) and (
                    where is None or where(event)
                ):
                    return event
            if time.monotonic() > deadline:
                last = "\n".join(json.dumps(e) for e in self.events[-15:])
                raise AssertionError(f"no event {fields} within {timeout}s; last events:\n{last}")
            time.sleep(0.02)


class Master:
    """A ``python -m hiscrm.master`` subprocess (or ``command``) with its own state dir and
    marker, started in its directory (or ``cwd``)."""

    def __init__(
        self,
        tmp_path: Path,
        config: dict[str, Any],
        extra_args: list[str] | None = None,
        code_dir: Path = REPO,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        command: list[str] | None = None,
    ):
        self.dir = tmp_path
        self.cwd = cwd or tmp_path  # the master's working directory
        self.command = command or [sys.executable, "-m", "hiscrm.master"]
        self.state_dir = tmp_path / "var"
        self.config_path = tmp_path / "hiscrm.toml"
        self.config_path.write_text(to_toml(config))
        self.store_url: str | None = config.get("store", {}).get("url")
        self.marker = uuid.uuid4().hex
        self.log = LogReader(self.state_dir / "logs" / "master.log")
        self.stdout_path = tmp_path / "master.out"
        self.extra_args = extra_args or []
        self.code_dir = code_dir  # where the hiscrm package is imported from
        self.extra_env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "Master":
        """Start (or, after it died, start again) the master on this state dir."""
        env = dict(os.environ)
        env[MARKER] = self.marker
        env["PYTHONPATH"] = os.pathsep.join([str(self.code_dir), str(TESTS_DIR)])
        env.update(self.extra_env)
        with self.stdout_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [*self.command, "--config", str(self.config_path), *self.extra_args],
                env=env,
                cwd=self.cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def db(self) -> Path:
        return self.state_dir / "hiscrm.db"

    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Read the master's store (SQLite or PostgreSQL) as an outside client would;
        ``sql`` with ``?`` marks."""
        if self.store_url is None:
            return query(self.db, sql, *params)
        import psycopg

        with psycopg.connect(self.store_url, autocommit=True) as conn:
            return conn.execute(sql.replace("?", "%s"), params).fetchall()

    def api_url(self, timeout: float = 20.0) -> str:
        """The API's URL from master.json, once the master has written it."""
        path = self.state_dir / "master.json"
        wait_until(path.exists, timeout, "master.json written")
        return str(json.loads(path.read_text())["api_url"])

    @property
    def token(self) -> str:
        return (self.state_dir / "token").read_text().strip()

    def http(self, token: str | None = None, timeout: float = 60.0) -> httpx.Client:
        """A client of the API, with the master's token unless told otherwise."""
        headers = {"Authorization": f"Bearer {token if token is not None else self.token}"}
        return httpx.Client(base_url=self.api_url(), headers=headers, timeout=timeout)

    def worker_log(self, worker_id: str) -> Path:
        return self.state_dir / "logs" / f"{worker_id}.log"

    def wait_running(self, worker_id: str, timeout: float = 20.0, after: int = 0) -> int:
        """Wait until ``worker_id`` registers (after event index ``after``); its pid."""
        event = self.log.wait_for(
            timeout, after=after, event="worker state", worker=worker_id, new="running"
        )
        return int(event["pid"])

    def wait_all_running(self, worker_ids: list[str], timeout: float = 20.0) -> dict[str, int]:
        return {w: self.wait_running(w, timeout) for w in worker_ids}

    def mark(self) -> int:
        """Index into the events seen so far, for waiting on what comes next."""
        return len(self.log.refresh())

    def stop(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def output(self) -> str:
        return self.stdout_path.read_text(errors="replace")


def marked_processes(marker: str) -> Iterator[psutil.Process]:
    me = os.getpid()
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == me:
            continue
        try:
            if proc.environ().get(MARKER) == marker and proc.status() != psutil.STATUS_ZOMBIE:
                yield proc
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue


def kill_leftovers(marker: str) -> list[str]:
    """Kill every live process carrying ``marker``; describe what was found."""
    found = []
    for proc in marked_processes(marker):
        try:
            found.append(f"{proc.pid} {' '.join(proc.cmdline())[:100]}")
            proc.kill()
        except psutil.NoSuchProcess:
            continue
    return found


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``predicate`` until true; returns the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.01)
    return time.monotonic() - start


def query(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Read the master's store, read-only, as an outside client would."""
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise
    finally:
        conn.close()


def count(db: Path, table: str, account_id: str) -> int:
    rows = query(db, f"SELECT count(*) FROM {table} WHERE account_id = ?", account_id)
    return int(rows[0][0]) if rows else 0


_NODE_LABEL = re.compile(r'\{node="[^"]*"\}|node="[^"]*",|,node="[^"]*"')


def without_node(text: str) -> str:
    """A Prometheus exposition without the ``node`` label a master on PostgreSQL (in a
    cluster) puts on every sample, so that one assertion holds on both stores."""
    return _NODE_LABEL.sub("", text)


def metric(text: str, line_start: str) -> float:
    """The value of the first sample in a Prometheus exposition that starts so (the
    ``node`` label aside)."""
    for line in without_node(text).splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {line_start!r} in the metrics")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The whole lines of a file of JSON lines (as the recording platforms write); empty
    if not there yet. A line still being written (no newline yet) is left for later."""
    if not path.exists():
        return []
    lines = path.read_text().split("\n")[:-1]  # what follows the last newline is not whole
    return [json.loads(line) for line in lines if line]
