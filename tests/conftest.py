import itertools
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from harness import FAST_SUPERVISION, REPO, Master, kill_leftovers, marked_processes
from pg_server import REQUIRE_ENV, PostgresServer, PostgresUnavailable, running_server

if TYPE_CHECKING:
    from browser import Tab
    from playwright.sync_api import Browser

MasterFactory = Callable[..., Master]


def accounts_of(platform: str, n: int = 1, **options: object) -> list[dict[str, Any]]:
    """``n`` accounts acc-1 … acc-n on one platform, with the same options."""
    return [
        {"id": f"acc-{i}", "platform": platform, "options": dict(options)} for i in range(1, n + 1)
    ]


def make_config(
    accounts: list[dict[str, Any]] | None = None,
    workers: int = 2,
    supervision: dict[str, Any] | None = None,
    **top: Any,
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "workers": workers,
        "supervision": {**FAST_SUPERVISION, **(supervision or {})},
        "api": {"port": 0},
        **top,
    }
    config["accounts"] = (
        accounts
        if accounts is not None
        else [
            {"id": f"acc-{n}", "platform": "demo", "options": {"rate": 2.0, "seed": n}}
            for n in range(1, 2 * workers + 1)
        ]
    )
    return config


BROKEN_RUNTIME = "RuntimeError: boom at import: the worker runtime is broken"


def broken_worker_code(tmp_path: Path, only_in: str | None = None) -> Path:
    """A copy of hiscrm (for ``code_dir``) whose worker runtime raises at import: every
    worker fails at boot (exit 78), and so does a fork template. With ``only_in`` (a
    worker id), only that worker's spawned processes, and only while the file named by
    ``HISCRM_TEST_BROKEN_MARKER`` exists. (A platform that cannot load no longer fails
    a worker's boot: it fails its own accounts.)"""
    code = tmp_path / "code"
    shutil.copytree(REPO / "hiscrm", code / "hiscrm")
    module = code / "hiscrm" / "worker" / "adopted.py"
    if only_in is None:
        breaker = f'raise RuntimeError("{BROKEN_RUNTIME.partition(": ")[2]}")\n'
    else:
        breaker = (
            "import multiprocessing as _mp, os as _os\n"
            f'if _mp.current_process().name == "hiscrm-{only_in}" and _os.path.exists(\n'
            '    _os.environ.get("HISCRM_TEST_BROKEN_MARKER", "/nonexistent")\n'
            "):\n"
            f'    raise RuntimeError("{only_in} cannot load the worker runtime while the marker exists")\n'
        )
    module.write_text(breaker + module.read_text())
    return code


@contextmanager
def masters(directory: Path, store_url: str | None = None) -> Iterator[MasterFactory]:
    """Start real masters; afterwards stop them and fail if anything they started is left.
    With ``store_url``, a config without ``[store]`` stores there."""
    started: list[Master] = []

    def start(
        config: dict[str, Any] | None = None,
        extra_args: list[str] | None = None,
        code_dir: Path = REPO,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        files: dict[str, str] | None = None,
        command: list[str] | None = None,
    ) -> Master:
        """``files``: written into the master's directory (beside its config) first."""
        home = directory / f"m{len(started)}"
        home.mkdir()
        if config is not None and store_url is not None and "store" not in config:
            config = {**config, "store": {"url": store_url}}
        for name, text in (files or {}).items():
            (home / name).write_text(text)
        if config is None:
            config = make_config(**({"store": {"url": store_url}} if store_url else {}))
        master = Master(
            home,
            config,
            extra_args,
            code_dir,
            env,
            cwd,
            command,
        )
        started.append(master)
        return master.start()

    yield start

    leftovers: list[str] = []
    for master in started:
        if master.proc is not None and master.proc.poll() is None:
            try:
                master.stop(timeout=20)
            except Exception:
                master.proc.kill()
                master.proc.wait(5)
        deadline = time.monotonic() + 5  # the multiprocessing resource tracker exits last
        while any(True for _ in marked_processes(master.marker)) and time.monotonic() < deadline:
            time.sleep(0.05)
        leftovers += kill_leftovers(master.marker)
    assert not leftovers, f"processes left behind: {leftovers}"


@pytest.fixture
def start_master(tmp_path: Path) -> Iterator[MasterFactory]:
    with masters(tmp_path) as start:
        yield start


@pytest.fixture(scope="module")
def start_module_master(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MasterFactory]:
    """For tests that can share one master (they must not change what others rely on)."""
    with masters(tmp_path_factory.mktemp("shared")) as start:
        yield start


STORES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=STORES)
def start_master_each_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[MasterFactory]:
    """``start_master``, once on the embedded SQLite and once on a fresh PostgreSQL
    database: for the suites that must pass the same on both."""
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    with masters(tmp_path, url) as start:
        yield start


@pytest.fixture(scope="module", params=STORES)
def start_module_master_each_store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MasterFactory]:
    """``start_module_master`` on each store (PostgreSQL: a database for the module)."""
    if request.param == "sqlite":
        with masters(tmp_path_factory.mktemp("shared")) as start:
            yield start
        return
    server: PostgresServer = request.getfixturevalue("pg_server")
    name = f"module_{next(_databases)}"
    url = server.create_database(name)
    try:
        with masters(tmp_path_factory.mktemp("shared"), url) as start:
            yield start
    finally:
        server.drop_database(name)


# --- PostgreSQL ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL for the session. Not installed: the tests that need it fail
    when HISCRM_REQUIRE_POSTGRES=1 (as in CI), and are skipped otherwise."""
    try:
        with running_server() as server:
            yield server
    except PostgresUnavailable as exc:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1, but {exc}", pytrace=False)
        pytest.skip(f"{exc}; set {REQUIRE_ENV}=1 to make this a failure")


_databases = itertools.count(1)


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database of the session's server, for one test; its URL."""
    name = f"test_{next(_databases)}"
    url = pg_server.create_database(name)
    yield url
    pg_server.drop_database(name)


# --- a browser -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> Iterator["Browser"]:
    """A headless Chromium for the module (Debian's; see tests/browser.py). Not installed:
    the tests that need it fail when HISCRM_REQUIRE_BROWSER=1 (as in CI), and are skipped
    otherwise."""
    from browser import REQUIRE_ENV as BROWSER_REQUIRED
    from browser import BrowserUnavailable, running_browser

    try:
        with running_browser() as browser:
            yield browser
    except BrowserUnavailable as exc:
        if os.environ.get(BROWSER_REQUIRED) == "1":
            pytest.fail(f"{BROWSER_REQUIRED}=1, but {exc}", pytrace=False)
        pytest.skip(f"{exc}; set {BROWSER_REQUIRED}=1 to make this a failure")


@pytest.fixture
def tab(chromium: "Browser", master: Master) -> Iterator["Tab"]:
    """A signed-in tab on the overview of the module's ``master``; its console must stay
    free of errors."""
    from browser import signed_in

    opened = signed_in(chromium, master)
    yield opened
    opened.close()
    opened.no_console_errors()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "pg_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)
        if "chromium" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.browser)
