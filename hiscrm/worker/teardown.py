"""How a worker process ends, shared by ``bootstrap`` (which installs the signal
handlers) and ``runtime`` (which knows how to wind down gracefully).

A worker is a child subreaper (see ``bootstrap``): whatever its descendants start stays
in its tree even when an intermediate process exits, so the tree walk here finds every
process it started, also those that left its process group with ``setsid()`` or
``setpgid()``. Every way out ends that tree: a graceful stop when the worker exits, the
master's death in the parent-death signal handler.

Standard library only; the killing runs from signal handlers, so it imports and logs
nothing and writes its one line with ``os.write``.
"""

import os
import signal
from collections.abc import Callable

from hiscrm import process_tree

# What SIGTERM does while the master is alive; the runtime sets it once its loop runs.
_graceful_stop: Callable[[], None] | None = None


def set_graceful_stop(callback: Callable[[], None] | None) -> None:
    """Called by the runtime: what SIGTERM should do while the master is alive."""
    global _graceful_stop
    _graceful_stop = callback


def request_graceful_stop() -> bool:
    """From the SIGTERM handler: False if there is nothing to wind down (still booting,
    or already on the way out)."""
    if _graceful_stop is None:
        return False
    _graceful_stop()
    return True


def kill_descendants() -> list[int]:
    """SIGKILL every process this worker started, directly or not, in any group or
    session. Returns their pids."""
    return process_tree.kill_descendants(os.getpid())


def kill_own_group(why: str) -> None:
    """Last act of an orphaned worker: SIGKILL everything it started, then its process
    group, itself included."""
    killed = kill_descendants()
    message = (
        f"worker pid {os.getpid()}: {why}; killed {len(killed)} descendant processes, "
        "now its process group\n"
    )
    os.write(2, message.encode())
    os.killpg(os.getpgrp(), signal.SIGKILL)
