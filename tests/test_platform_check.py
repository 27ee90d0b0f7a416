"""The master's view of platforms, without importing them: where they are found, and
whether a reload's replacement lost one its predecessor runs."""

import sys
from pathlib import Path

import pytest

from hiscrm.master.supervision.platform_check import (
    lost_platforms,
    missing_platforms,
    use_plugin_paths,
)
from hiscrm.models import AccountSpec
from hiscrm.protocol import WorkerRegister


def registration(**platform_errors: str) -> WorkerRegister:
    return WorkerRegister(
        worker_id="worker1",
        pid=1,
        protocol=1,
        schema_hash="x",
        platforms=[],
        boot_ms=1.0,
        code_version="v",
        code_files=[],
        platform_errors=platform_errors,
    )


def test_a_replacement_that_cannot_load_what_the_old_process_runs_has_lost_it() -> None:
    new = registration(a="Traceback …\nplatform 'a' cannot be loaded: X", b="…")
    assert lost_platforms(registration(), new) == dict(new.platform_errors)
    assert lost_platforms(registration(b="it failed there too"), new) == {
        "a": new.platform_errors["a"]
    }
    assert lost_platforms(registration(a="…", b="…"), new) == {}
    assert lost_platforms(None, new) == {}  # nothing to compare with
    assert lost_platforms(registration(a="…"), registration()) == {}  # fixed: nothing lost


def test_a_platform_found_only_on_a_plugin_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "pc_plugin").mkdir()
    (tmp_path / "pc_plugin" / "__init__.py").write_text("")
    (tmp_path / "pc_plugin" / "platform.py").write_text("class P: ...\n")
    accounts = [
        AccountSpec(id="a", platform="pc_plugin.platform:P"),
        AccountSpec(id="b", platform="pc_plugin.missing:P"),
        AccountSpec(id="c", platform="demo"),
    ]
    assert missing_platforms(accounts, []) == {
        "pc_plugin.platform:P": ["a"],
        "pc_plugin.missing:P": ["b"],
    }
    assert missing_platforms(accounts, [str(tmp_path)]) == {"pc_plugin.missing:P": ["b"]}
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert use_plugin_paths([tmp_path]) == [str(tmp_path)]
    assert sys.path[-1] == str(tmp_path)  # after what was there: it hides nothing
    assert missing_platforms(accounts, []) == {"pc_plugin.missing:P": ["b"]}
    assert "pc_plugin" not in sys.modules  # found, not imported
