"""Fails to import in worker2 while a marker file exists (its path in the environment)."""

import multiprocessing
import os
from pathlib import Path

from hiscrm.platforms.demo import DemoPlatform

_marker = os.environ.get("HISCRM_TEST_BROKEN_MARKER")
if (
    multiprocessing.current_process().name == "hiscrm-worker2"
    and _marker
    and Path(_marker).exists()
):
    raise RuntimeError("worker2 cannot load this platform while the marker exists")


class Demo(DemoPlatform):
    pass
