"""hiscrm: a master supervisor running worker processes that monitor social-media accounts.

This package root must import nothing but the standard library: a freshly spawned
worker imports it before its log file is in place (see ``hiscrm.worker.bootstrap``).
"""

import time

__version__ = "0.1.0"

# When this process began importing hiscrm: a source file modified after this may not
# be what the process runs (see ``code_fingerprint``).
IMPORTS_BEGAN_NS = time.time_ns()
