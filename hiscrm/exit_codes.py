"""Exit codes with a meaning of their own, shared by the master, workers and hiscrmctl.

Numbers follow BSD sysexits where one fits, so they do not collide with Python's own 1
(uncaught exception) or 2 (usage).
"""

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    CRASHED = 1  # an uncaught exception; Python's own default
    USAGE = 2  # bad command line or configuration
    KILLED_WORKERS = 3  # the master stopped, but had to kill its workers (a second signal)
    TASK_FAILED = 70  # a worker's own sync or heartbeat task failed (EX_SOFTWARE)
    LOG_FAILED = 73  # a worker could not open its log file (EX_CANTCREAT)
    ORPHANED = 75  # a worker whose master went away stopped itself (EX_TEMPFAIL)
    PROTOCOL_MISMATCH = 76  # master and worker speak different protocols (EX_PROTOCOL)
    BOOT_FAILED = 78  # a worker could not import its runtime or platforms (EX_CONFIG)
