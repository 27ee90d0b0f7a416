"""A real PostgreSQL server for tests: Debian's ``postgresql`` package, run by hand.

``initdb`` and ``pg_ctl`` (found under ``/usr/lib/postgresql/<version>/bin``, the newest
version, or on PATH) make a cluster in a temporary directory and start it on a free port
of 127.0.0.1, its Unix socket in that directory. PostgreSQL refuses to run as root, so
when the tests run as root the server runs as ``nobody`` and the directory belongs to it.
Local (socket) connections are trusted; TCP connections need the password, so URLs carry
one, as a real deployment's would.

The server carries a test marker in its environment like the masters do, and is stopped
(``pg_ctl stop -m fast``) and checked for leftovers at the end.
"""

import contextlib
import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
from harness import MARKER, kill_leftovers, marked_processes

REQUIRE_ENV = "HISCRM_REQUIRE_POSTGRES"
BIN_DIR_ENV = "HISCRM_POSTGRES_BIN_DIR"  # where initdb and pg_ctl are, if not the usual place
SUPERUSER = "hiscrm"
PASSWORD = "s3cret-test-pw"  # trusted on the socket; on TCP it is checked
UNPRIVILEGED = "nobody"
START_TIMEOUT_S = 30


class PostgresUnavailable(Exception):
    """No PostgreSQL to run here; the message says what is missing."""


def _version_key(path: str) -> tuple[int, ...]:
    match = re.search(r"/postgresql/([\d.]+)/bin/", path)
    return tuple(int(p) for p in match.group(1).split(".")) if match else ()


def find_bin_dir() -> Path:
    """Where ``initdb``, ``pg_ctl`` and ``postgres`` are: $HISCRM_POSTGRES_BIN_DIR if set,
    else the newest Debian version, else PATH."""
    if chosen := os.environ.get(BIN_DIR_ENV):
        if not (Path(chosen) / "initdb").is_file():
            raise PostgresUnavailable(f"{BIN_DIR_ENV}={chosen}: no initdb there")
        return Path(chosen)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key)
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    if on_path is not None and shutil.which("pg_ctl") is not None:
        return Path(on_path).resolve().parent
    raise PostgresUnavailable(
        "PostgreSQL is not installed: no initdb under /usr/lib/postgresql/*/bin or on PATH "
        "(install Debian's postgresql package: .ci/install-postgres, as root)"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PostgresServer:
    """A running cluster; ``url(db)`` for TCP connections with the password."""

    bin_dir: Path
    root: Path  # belongs to the server's user; holds data/, the socket, the log
    port: int
    marker: str
    user: pwd.struct_passwd | None  # the account it runs as, when the tests run as root
    durable: bool = False  # fsync and synchronous commits on, as in production

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.url(database), autocommit=True, connect_timeout=10)

    def _run(self, *args: str, timeout: float = START_TIMEOUT_S + 10) -> None:
        command = [*self._as_user(), *args]
        env = {**os.environ, MARKER: self.marker, "LC_ALL": "C"}
        result = subprocess.run(
            command,
            cwd=self.root,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
                f"\n{self.server_log()}"
            )

    def _as_user(self) -> list[str]:
        if self.user is None:
            return []
        return [
            "setpriv",
            f"--reuid={self.user.pw_uid}",
            f"--regid={self.user.pw_gid}",
            "--clear-groups",
            "--",
        ]

    def server_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except FileNotFoundError:
            return "(no server log)"

    def init(self) -> None:
        pwfile = self.root / "pwfile"
        pwfile.write_text(PASSWORD + "\n")
        self._chown(pwfile)
        self._run(
            str(self.bin_dir / "initdb"),
            "--pgdata",
            str(self.data),
            "--username",
            SUPERUSER,
            "--pwfile",
            str(pwfile),
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        )
        pwfile.unlink()

    def start(self) -> None:
        # Durability settings off unless asked for: tests are about semantics, and a test
        # server that fsyncs every commit only slows the suite.
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=200"
        )
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(
            str(self.bin_dir / "pg_ctl"),
            "start",
            "--pgdata",
            str(self.data),
            "--log",
            str(self.log_path),
            "--wait",
            f"--timeout={START_TIMEOUT_S}",
            "--options",
            options,
        )
        self.wait_ready()

    def wait_ready(self) -> None:
        """Until a TCP connection with the password works, within the start timeout."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with self.connect() as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"PostgreSQL on port {self.port} not ready within {START_TIMEOUT_S}s: "
                        f"{exc}\n{self.server_log()}"
                    ) from exc
                time.sleep(0.05)

    def stop(self) -> list[str]:
        """Stop the server (fast: sessions are ended); kill and name anything left. A
        failed ``pg_ctl stop`` is raised after the leftovers are killed."""
        failure: Exception | None = None
        if (self.data / "postmaster.pid").exists():
            try:
                self._run(
                    str(self.bin_dir / "pg_ctl"),
                    "stop",
                    "--pgdata",
                    str(self.data),
                    "--mode=fast",
                    "--wait",
                    f"--timeout={START_TIMEOUT_S}",
                )
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                failure = exc
        deadline = time.monotonic() + 5
        while any(True for _ in marked_processes(self.marker)) and time.monotonic() < deadline:
            time.sleep(0.05)
        leftovers = kill_leftovers(self.marker)
        if failure is not None:
            raise failure
        return leftovers

    def _chown(self, path: Path) -> None:
        if self.user is not None:
            os.chown(path, self.user.pw_uid, self.user.pw_gid)

    def create_database(self, name: str) -> str:
        with self.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        with self.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _server_user() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(UNPRIVILEGED)
    except KeyError:
        raise PostgresUnavailable(
            f"the tests run as root and PostgreSQL refuses root, but there is no "
            f"{UNPRIVILEGED!r} account to run it as"
        ) from None


@contextlib.contextmanager
def running_server(durable: bool = False) -> Iterator[PostgresServer]:
    """A fresh cluster on a free port for as long as the block runs."""
    bin_dir = find_bin_dir()
    user = _server_user()
    if user is not None and shutil.which("setpriv") is None:
        raise PostgresUnavailable("the tests run as root and setpriv (util-linux) is missing")
    # Not under pytest's base directory: its directories are private to the user running
    # the tests, and the server's user must reach its own.
    root = Path(tempfile.mkdtemp(prefix="hiscrm-pg-"))
    server = PostgresServer(bin_dir, root, free_port(), uuid.uuid4().hex, user, durable)
    try:
        server._chown(root)
        server.init()
        try:
            server.start()
        except RuntimeError:  # the port may have been taken since: once more on another
            server.port = free_port()
            server.start()
        yield server
    finally:
        leftovers = server.stop()
        shutil.rmtree(root)
        assert not leftovers, f"PostgreSQL processes left behind: {leftovers}"
