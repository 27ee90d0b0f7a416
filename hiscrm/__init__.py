"""hiscrm: a master supervisor running worker processes that monitor social-media accounts.

This package root must stay import-free: a freshly spawned worker imports it before its
log file is in place (see ``hiscrm.worker.bootstrap``).
"""

__version__ = "0.1.0"
