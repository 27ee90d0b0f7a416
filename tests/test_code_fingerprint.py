"""Fingerprints of the code a process runs, against real files and a real interpreter."""

import importlib.util
import os
import py_compile
import subprocess
import sys
import time
from pathlib import Path

import pytest

import hiscrm
from hiscrm.code_fingerprint import DiskCheck, describe, drop_stale_bytecode, loaded_files


def run_module(directory: Path, name: str) -> str:
    """Import ``name`` from ``directory`` in a fresh interpreter (reading, not writing,
    bytecode caches) and print its V."""
    env = {**os.environ, "PYTHONPATH": str(directory), "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", f"import {name}; print({name}.V)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return result.stdout.strip()


@pytest.mark.timeout(60)
def test_a_stale_bytecode_cache_is_found_and_removed(tmp_path: Path) -> None:
    source = tmp_path / "edited.py"
    second = int(time.time()) - 100
    source.write_text("V = 1\n")
    os.utime(source, (second + 0.1, second + 0.1))
    cache = Path(importlib.util.cache_from_source(str(source)))
    py_compile.compile(str(source), cfile=str(cache), doraise=True)
    os.utime(cache, (second + 0.5, second + 0.5))
    assert not drop_stale_bytecode(str(source))  # the cache matches: nothing to do
    assert cache.exists()

    # Edited again within the same second, same size: Python still takes the old cache.
    source.write_text("V = 2\n")
    os.utime(source, (second + 0.9, second + 0.9))
    assert run_module(tmp_path, "edited") == "1"

    assert drop_stale_bytecode(str(source))
    assert not cache.exists()
    assert run_module(tmp_path, "edited") == "2"


@pytest.mark.timeout(60)
def test_a_file_changed_while_imported_counts_as_changed(tmp_path: Path) -> None:
    sys.path.insert(0, str(tmp_path))
    try:
        (tmp_path / "settled_module.py").write_text("V = 1\n")
        # Settled: written well before this process began importing hiscrm.
        before = hiscrm.IMPORTS_BEGAN_NS / 1e9 - 100
        os.utime(tmp_path / "settled_module.py", (before, before))
        (tmp_path / "racy_module.py").write_text("V = 1\n")  # newer than this process
        import racy_module  # noqa: F401
        import settled_module  # noqa: F401

        files = {Path(f.path).name: f for f in loaded_files()}
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("racy_module", None)
        sys.modules.pop("settled_module", None)
    settled = files["settled_module.py"]
    racy = files["racy_module.py"]
    assert settled == describe(str(tmp_path / "settled_module.py"))
    assert racy.sha256 == "racy"
    check = DiskCheck()
    assert check.changed([settled]) == []
    assert check.changed([racy]) == [racy.path]  # so a process that has it is replaced
