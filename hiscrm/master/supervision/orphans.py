"""Processes a dead worker left behind: found among the master's children and killed.

The master is a child subreaper, and so is every worker for its own descendants: a
worker kills its whole tree whenever it stops or loses its master (see
``hiscrm.worker.teardown``). A worker killed outright (SIGKILL, the OOM killer, a
segfault) cannot; its descendants then become the master's children, and those that left
its process group (``setsid()``, ``setpgid()``) survive the group kill that follows
every exit.

:meth:`EscapedProcesses.scan` (run when a child of the master has exited) finds them:
children of the master that it does not know (not a worker, template or spare) and that
are not in the master's session (a worker makes a session of its own, so nothing it
starts can join the master's; whatever the master starts itself stays in it unless it
is known). Such a child is killed with its whole tree once a second look, ``CONFIRM_S``
later, still finds it unknown: a worker forked by the template is the master's child a
moment before the master hears its pid, and a slow template may take a while to say it.
The second look waits a few turns of the event loop too, so that a start the loop had
under way when it was busy can finish first.
"""

import asyncio
import os
from collections.abc import Callable

from structlog.typing import FilteringBoundLogger

from hiscrm import process_tree

CONFIRM_S = 1.0  # the 2 s a worker's children get to go are counted from its death
SETTLE_TURNS = 3  # event loop turns before the second look acts
MAX_COMMAND_CHARS = 200

Suspects = dict[int, int | None]  # pid -> start time


class EscapedProcesses:
    def __init__(self, log: FilteringBoundLogger) -> None:
        self._log = log
        self._session = os.getsid(0)
        self.killed_total = 0

    def scan(self, known: Callable[[], set[int]]) -> None:
        """Look for escaped processes now; kill those still unknown at a second look.
        ``known`` gives the master's children that are its own (workers, templates,
        spares), as of when it is called."""
        suspects = self._suspects(known())
        if suspects:
            loop = asyncio.get_running_loop()
            loop.call_later(CONFIRM_S, self._settle, suspects, known, SETTLE_TURNS)

    def _suspects(self, known: set[int]) -> Suspects:
        found: Suspects = {}
        for pid in process_tree.children(os.getpid()):
            if pid in known or process_tree.is_zombie(pid):
                continue
            session = process_tree.session_of(pid)
            if session is None or session == self._session:
                continue
            found[pid] = process_tree.start_time(pid)
        return found

    def _settle(self, suspects: Suspects, known: Callable[[], set[int]], turns: int) -> None:
        if turns > 0:
            asyncio.get_running_loop().call_soon(self._settle, suspects, known, turns - 1)
        else:
            self._kill_still_unknown(suspects, known())

    def _kill_still_unknown(self, suspects: Suspects, known: set[int]) -> None:
        now = self._suspects(known)
        for pid, started in suspects.items():
            if pid not in now or now[pid] != started:  # now known, gone, or a new process
                continue
            command = _command(pid)
            killed = process_tree.kill_descendants(pid, including_root=True)
            self.killed_total += len(killed)
            self._log.warning(
                "killed processes a dead worker left behind",
                pid=pid,
                command=command,
                killed=killed,
                escaped_killed_total=self.killed_total,
            )


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read(MAX_COMMAND_CHARS * 4)
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()[:MAX_COMMAND_CHARS]
