"""Reaping the processes a worker adopts as a child subreaper.

When a process the worker's platforms started exits before its own children, those
children become the worker's (see ``bootstrap``). Nobody else will wait for them, so once
they exit they would stay zombies for as long as the worker runs. The worker's heartbeat
calls :meth:`AdoptedZombies.reap`: a child that was already a zombie at the previous call
is reaped. (A child the worker forked itself is waited for by its owner, normally at once;
one left a zombie for a whole heartbeat interval is reaped too, and its ``Popen`` then
reports exit code 0.)
"""

import os

from hiscrm import process_tree


class AdoptedZombies:
    def __init__(self) -> None:
        self._seen: set[tuple[int, int | None]] = set()  # (pid, start time) last time
        self.reaped = 0

    def reap(self) -> list[int]:
        """Reap the children that have been zombies since the last call; their pids."""
        zombies = {
            (pid, process_tree.start_time(pid))
            for pid in process_tree.children(os.getpid())
            if process_tree.is_zombie(pid)
        }
        reaped = []
        for pid, _ in zombies & self._seen:
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    reaped.append(pid)
            except ChildProcessError:  # its owner was quicker
                continue
        self._seen = {zombie for zombie in zombies if zombie[0] not in reaped}
        self.reaped += len(reaped)
        return reaped
