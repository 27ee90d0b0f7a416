"""The PostgreSQL fixture where PostgreSQL is missing: a test that needs it is skipped,
saying why, unless HISCRM_REQUIRE_POSTGRES=1 (as in CI) makes it a failure."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from harness import TESTS_DIR
from pg_server import BIN_DIR_ENV, REQUIRE_ENV

A_POSTGRES_TEST = "test_postgres_store.py::test_stats_name_the_store_without_the_password"


def run_without_postgres(tmp_path: Path, require: bool) -> subprocess.CompletedProcess[str]:
    empty = tmp_path / "no-postgres"
    empty.mkdir()
    env = {**os.environ, BIN_DIR_ENV: str(empty)}
    env.pop(REQUIRE_ENV, None)
    if require:
        env[REQUIRE_ENV] = "1"
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-rs",
            "-p",
            "no:cacheprovider",
            "-n",
            "0",
            f"--basetemp={tmp_path / 'inner'}",
            str(TESTS_DIR / A_POSTGRES_TEST),
        ],
        cwd=TESTS_DIR.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )


@pytest.mark.timeout(120)
def test_missing_postgres_skips_with_the_reason(tmp_path: Path) -> None:
    result = run_without_postgres(tmp_path, require=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 skipped" in result.stdout
    assert "no initdb there" in result.stdout
    assert f"set {REQUIRE_ENV}=1 to make this a failure" in result.stdout


@pytest.mark.timeout(120)
def test_missing_postgres_fails_when_required(tmp_path: Path) -> None:
    result = run_without_postgres(tmp_path, require=True)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 error" in result.stdout
    assert f"{REQUIRE_ENV}=1, but {BIN_DIR_ENV}=" in result.stdout
