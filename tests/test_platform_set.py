"""Loading platforms one by one: a platform that cannot load is recorded with its traceback
and the files its import went through, the others load all the same."""

import os
import sys
import traceback
from pathlib import Path

import pytest

from hiscrm.code_fingerprint import files_at
from hiscrm.worker.platform_set import add_plugin_paths, load_platforms

DEMO = "hiscrm.platforms.demo:DemoPlatform"


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory on sys.path for modules written by the test."""
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("ps_syntax", "ps_exits", "ps_appears", "ps_raises"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return tmp_path


def test_each_platform_loads_on_its_own(plugins: Path) -> None:
    (plugins / "ps_syntax.py").write_text("class P:\n    async def run(self, ctx) -> None\n")
    (plugins / "ps_exits.py").write_text("import sys\nsys.exit(5)\n")
    (plugins / "ps_raises.py").write_text("import json\njson.loads('{')\n")
    specs = [
        "ps_syntax:P",
        DEMO,
        "ps_exits:P",
        "testplatforms.no_such_module:P",
        "ps_raises:P",
        "testplatforms.failing:NoRun",
    ]
    loaded = load_platforms(specs)
    assert list(loaded.classes) == [DEMO]
    assert list(loaded.failures) == [s for s in specs if s != DEMO]
    summaries = {spec: f.summary for spec, f in loaded.failures.items()}
    assert summaries["ps_syntax:P"].startswith(
        "platform 'ps_syntax:P' cannot be loaded: SyntaxError: "
    )
    assert summaries["ps_exits:P"] == "platform 'ps_exits:P' cannot be loaded: SystemExit: 5"
    assert summaries["testplatforms.no_such_module:P"] == (
        "platform 'testplatforms.no_such_module:P' cannot be loaded: "
        "no module named 'testplatforms.no_such_module'"
    )
    assert summaries["ps_raises:P"].startswith(
        "platform 'ps_raises:P' cannot be loaded: JSONDecodeError: "
    )
    for failure in loaded.failures.values():
        assert failure.reason.endswith("\n" + failure.summary)
        assert failure.reason.startswith(("Traceback", "  File", "    "))
        assert len(failure.reason) <= 4000
    # The files a failed import went through count in the fingerprint, the standard
    # library's do not; a syntax error names its file without a frame in it.
    fingerprinted = {f.path for f in files_at(loaded.failure_files())}
    for name in ("ps_syntax.py", "ps_exits.py", "ps_raises.py"):
        assert os.path.realpath(plugins / name) in fingerprinted
    assert not any(path.endswith(os.sep + "json" + os.sep + "decoder.py") for path in fingerprinted)
    assert set(loaded.errors()) == set(loaded.failures)


def test_what_the_template_could_not_load_is_tried_again(plugins: Path) -> None:
    template = load_platforms([DEMO, "ps_appears:P"])
    assert list(template.failures) == ["ps_appears:P"]
    # Not found: no file of its own to watch (a reload's fresh import finds it).
    assert not any("ps_appears" in path for path in template.failures["ps_appears:P"].files)
    (plugins / "ps_appears.py").write_text(
        "class P:\n    async def run(self, ctx):\n        pass\n"
    )
    forked = load_platforms([DEMO, "ps_appears:P"], preloaded=template)
    assert forked.classes[DEMO] is template.classes[DEMO]
    assert "ps_appears:P" in forked.classes
    assert forked.imported_here
    untouched = load_platforms([DEMO], preloaded=template)
    assert not untouched.imported_here


def test_plugin_paths_come_after_the_path_already_there(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", ["/first", "/second"])
    add_plugin_paths(["/plugins", "/first", "/plugins"])
    assert sys.path == ["/first", "/second", "/plugins"]


def test_a_failure_is_bounded_whatever_its_message() -> None:
    loaded = load_platforms(["testplatforms.bad_import:Never"])
    failure = loaded.failures["testplatforms.bad_import:Never"]
    assert failure.summary == (
        "platform 'testplatforms.bad_import:Never' cannot be loaded: "
        "RuntimeError: boom at import: this platform module is broken"
    )
    assert 'bad_import.py", line 3, in <module>' in failure.reason
    frames = traceback.extract_tb(failure.error.__traceback__)
    assert frames[-1].filename in failure.files
