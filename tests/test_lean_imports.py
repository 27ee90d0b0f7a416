"""structlog is imported without rich (its import costs every process's start ~50 ms),
and rich stays importable for whoever wants it afterwards."""

import subprocess
import sys

import pytest

CHECK = """
import sys
from hiscrm import lean_imports
lean_imports.import_structlog()
assert "rich" not in sys.modules, "rich was loaded"
import structlog.dev
assert structlog.dev.rich is None
from hiscrm.log_config import _plain_renderer
try:
    raise ValueError("boom")
except ValueError:
    line = _plain_renderer()(None, "error", {"event": "failed", "exc_info": sys.exc_info()})
assert "Traceback" in line and "ValueError: boom" in line, line
import rich.console
print("ok")
"""


@pytest.mark.timeout(30)
def test_structlog_loads_without_rich_and_tracebacks_still_render() -> None:
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=25)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
