"""Linux process controls the supervisor relies on (standard library only: a worker
imports this before its log file exists). Elsewhere they report that they are missing."""

import ctypes
import os
import sys

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, value: int) -> None:
    if not sys.platform.startswith("linux"):
        raise OSError(f"prctl is Linux only (this is {sys.platform})")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl({option}, {value}) failed: {os.strerror(errno)}")


def set_parent_death_signal(signum: int) -> None:
    """The kernel sends ``signum`` to this process when its parent dies."""
    _prctl(_PR_SET_PDEATHSIG, signum)


def set_child_subreaper() -> None:
    """Orphaned descendants of this process become its children (not init's)."""
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
